"""Paged attention on CPU in native code, reading the paged cache in place (no per-step gather
of each sequence's context), quantized caches (kv_quant) included: their rows are widened and
scaled as they load; see csrc/paged_attention_cpu.cpp. Same contract as
attention_ref.paged_attention_ref, which stays the ground truth its tests compare against."""

from __future__ import annotations

import ctypes
import functools

import torch

from kernels import kv_quant, native
from kernels.attention_metadata import PagedAttentionMetadata

# Codes of csrc/paged_attention_cpu.cpp: the query's (and output's) dtype, and the cache's,
# which is the query's or quantized (kv_quant's layout, read in place).
_QUERY_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_QUANTIZED_CACHE_DTYPES = {torch.int8: 2, torch.float8_e4m3fn: 3}
# The kernel's own limits (LANES and MAX_BLOCK in csrc/paged_attention_cpu.cpp).
_HEAD_DIM_MULTIPLE = 16
_MAX_BLOCK_SIZE = 64


def supports(query: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """Whether this path can run these tensors here (else the caller keeps the torch path)."""
    return (
        query.device.type == "cpu"
        and query.dtype in _QUERY_DTYPES
        and (kv_cache.dtype == query.dtype or kv_cache.dtype in _QUANTIZED_CACHE_DTYPES)
        and query.shape[-1] % _HEAD_DIM_MULTIPLE == 0
        and kv_cache.shape[-1] == _row_width(query.shape[-1], kv_cache)
        and kv_cache.shape[2] <= _MAX_BLOCK_SIZE
        and kv_cache.is_contiguous()
        and _library() is not None
    )


def paged_attention_native(
    query: torch.Tensor, kv_cache: torch.Tensor, meta: PagedAttentionMetadata, scale: float
) -> torch.Tensor:
    lib = _library()
    assert lib is not None, "call supports() first"
    query = query.contiguous()
    out = torch.empty_like(query)
    _, num_heads, head_dim = query.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    # Held in locals for the whole call: a converted temporary would be freed before the
    # kernel reads it.
    starts, seq_lens, table = (
        _int32(meta.query_start_loc),
        _int32(meta.seq_lens),
        _int32(meta.block_table),
    )
    query_code = _QUERY_DTYPES[query.dtype]
    status = lib.kvfleet_paged_attention(
        query_code,
        _QUANTIZED_CACHE_DTYPES.get(kv_cache.dtype, query_code),
        query.data_ptr(),
        kv_cache[0].data_ptr(),
        kv_cache[1].data_ptr(),
        out.data_ptr(),
        starts.data_ptr(),
        seq_lens.data_ptr(),
        table.data_ptr(),
        meta.num_seqs,
        num_heads,
        num_kv_heads,
        head_dim,
        block_size,
        table.shape[1],
        scale,
        torch.get_num_threads(),
    )
    if status != 0:
        raise ValueError(
            f"native paged attention refused heads={num_heads} kv_heads={num_kv_heads} "
            f"block_size={block_size}"
        )
    return out


def _row_width(head_dim: int, kv_cache: torch.Tensor) -> int:
    return head_dim + kv_quant.SCALE_BYTES if kv_quant.is_quantized(kv_cache) else head_dim


def _int32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int32).contiguous()


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native.load("paged_attention_cpu")
    if lib is not None:
        fn = lib.kvfleet_paged_attention
        fn.restype = ctypes.c_int
        fn.argtypes = [
            *[ctypes.c_int] * 2,
            *[ctypes.c_void_p] * 7,
            *[ctypes.c_int64] * 6,
            ctypes.c_float,
            ctypes.c_int,
        ]
    return lib
