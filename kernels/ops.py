"""The one dispatch point between the model and its kernels.

Every operation the model runs goes through here, so the choice of implementation is made in
one place: the Triton kernel when the tensors are on a CUDA device and Triton is installed, else
(CPU) the torch reference, except attention, which on CPU runs the native kernel that reads the
paged cache in place (attention_native), or where that cannot be built the batched torch path;
both are tested against the reference. The weight-quantized matmul likewise has a CPU path of
its own (quant_matmul_cpu). In a forward traced by torch.compile, attention over a
DecodeMetadata and the cache write go through the custom operators of compiled_ops, which call
back here at run time. Triton modules are imported on first use only, so this
module imports on machines without Triton.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from kernels import attention_native
from kernels.activation_ref import silu_and_mul_ref
from kernels.attention_cpu import paged_attention_cpu
from kernels.attention_metadata import AttentionMetadata, DecodeMetadata
from kernels.block_copy_ref import gather_blocks_ref, scatter_blocks_ref
from kernels.kv_store_ref import store_kv_ref
from kernels.norm_ref import fused_add_rms_norm_ref, rms_norm_ref
from kernels.quant_matmul_cpu import quant_matmul_cpu
from kernels.rope_ref import rotary_embedding_ref

__all__ = [
    "fused_add_rms_norm",
    "gather_blocks",
    "paged_attention",
    "quant_linear",
    "rms_norm",
    "rotary_embedding",
    "scatter_blocks",
    "silu_and_mul",
    "store_kv",
    "uses_triton",
]


def uses_triton(tensor: torch.Tensor) -> bool:
    """Whether operations on ``tensor`` run as Triton kernels (else as torch references)."""
    return tensor.is_cuda and _triton_installed()


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def paged_attention(
    query: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Causal attention of ``query`` [T, H, D] over the paged ``kv_cache``; see attention_ref."""
    if isinstance(meta, DecodeMetadata):
        return torch.ops.kvfleet.paged_decode_attention(
            query, kv_cache, meta.query_start_loc, meta.seq_lens, meta.block_table, scale,
            meta.max_seq_len,
        )  # fmt: skip
    if uses_triton(query):
        from kernels.attention_triton import paged_attention_triton

        return paged_attention_triton(query, kv_cache, meta, scale)
    if attention_native.supports(query, kv_cache):
        return attention_native.paged_attention_native(query, kv_cache, meta, scale)
    return paged_attention_cpu(query, kv_cache, meta, scale)


def store_kv(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write ``key``/``value`` [T, KV, D] into ``kv_cache`` at ``slot_mapping``; -1 skipped."""
    if torch.compiler.is_compiling():
        return torch.ops.kvfleet.store_kv(key, value, kv_cache, slot_mapping)
    if uses_triton(key):
        from kernels.kv_store_triton import store_kv_triton

        return store_kv_triton(key, value, kv_cache, slot_mapping)
    return store_kv_ref(key, value, kv_cache, slot_mapping)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension; see norm_ref."""
    if uses_triton(x):
        from kernels.norm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rms_norm(x + residual), x + residual)``; the sum is the next residual."""
    if uses_triton(x):
        from kernels.norm_triton import fused_add_rms_norm_triton

        return fused_add_rms_norm_triton(x, residual, weight, eps)
    return fused_add_rms_norm_ref(x, residual, weight, eps)


def rotary_embedding(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotation of ``query`` and ``key`` by ``positions``; see rope_ref."""
    if uses_triton(query):
        from kernels.rope_triton import rotary_embedding_triton

        return rotary_embedding_triton(positions, query, key, cos_sin_cache)
    return rotary_embedding_ref(positions, query, key, cos_sin_cache)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``x`` [..., 2 * I] holding gate then up."""
    if uses_triton(x):
        from kernels.activation_triton import silu_and_mul_triton

        return silu_and_mul_triton(x)
    return silu_and_mul_ref(x)


def quant_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (qweight * scale[:, None])^T (+ bias)`` over the last dimension of ``x``, with
    ``qweight`` [N, K] int8 or float8_e4m3fn and ``scale`` [N] float32; see quant_matmul_ref.
    On CPU the torch path of quant_matmul_cpu."""
    rows = x.reshape(-1, x.shape[-1])
    if uses_triton(x):
        from kernels.quant_matmul_triton import quant_matmul_triton

        out = quant_matmul_triton(rows, qweight, scale)
    else:
        out = quant_matmul_cpu(rows, qweight, scale)
    out = out.view(*x.shape[:-1], qweight.shape[0])
    return out if bias is None else out + bias


def gather_blocks(kv_cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """Blocks ``block_ids`` of ``kv_cache`` packed into [N, 2, block_size, KV, D]; see
    block_copy_ref for the layout."""
    if uses_triton(kv_cache):
        from kernels.block_copy_triton import gather_blocks_triton

        return gather_blocks_triton(kv_cache, block_ids)
    return gather_blocks_ref(kv_cache, block_ids)


def scatter_blocks(buffer: torch.Tensor, kv_cache: torch.Tensor, block_ids: torch.Tensor) -> None:
    """Write a buffer made by ``gather_blocks`` into blocks ``block_ids`` of ``kv_cache``."""
    if uses_triton(kv_cache):
        from kernels.block_copy_triton import scatter_blocks_triton

        return scatter_blocks_triton(buffer, kv_cache, block_ids)
    return scatter_blocks_ref(buffer, kv_cache, block_ids)
