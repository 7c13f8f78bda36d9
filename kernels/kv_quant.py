"""The quantized KV cache's layout: 8-bit values with a float32 scale per token and kv head.

A quantized cache is one tensor per layer whose dtype names the format (torch.int8, or
torch.float8_e4m3fn for "fp8") and whose last dimension holds each (token slot, kv head)'s
``head_dim`` quantized values followed by the 4 bytes of its float32 scale::

    kv_cache [2 (key, value), num_blocks, block_size, KV, head_dim + 4]

    one slot, one head:  | q[0] q[1] ... q[head_dim-1] | scale (float32, 4 bytes) |
                           value[i] ~= q[i] * scale

Scales are dynamic and symmetric, per row as kernels/eight_bit.py quantizes: amax / 127 for
int8, amax / 448 for fp8 e4m3; an all-zero row gets scale 1. Because a block's
scales live inside its own bytes, everything that moves blocks as bytes (copy-on-write, KV
transfer between pools, the transfer layout's block size) carries them unchanged.
"""

from __future__ import annotations

import torch

from kernels.eight_bit import FORMATS, is_eight_bit, quantize_last_dim, require_fp8

SCALE_BYTES = 4


def is_quantized(kv_cache: torch.Tensor) -> bool:
    """Whether ``kv_cache`` holds quantized values with scales (this module's layout)."""
    return is_eight_bit(kv_cache.dtype)


def cache_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The cache tensor's dtype for an ``EngineConfig.kv_cache_dtype``; "auto" is the model's."""
    return model_dtype if kv_cache_dtype == "auto" else FORMATS[kv_cache_dtype]


def check_device_supports(kv_cache_dtype: str, device: torch.device) -> None:
    """Raise ValueError for an fp8 cache on a CUDA device older than compute capability 8.9,
    whose Triton kernels cannot convert fp8 (int8 works on any); a CPU converts it in torch."""
    if kv_cache_dtype == "fp8":
        require_fp8(device, "kv_cache_dtype")


def slot_width(head_dim: int, kv_cache_dtype: str) -> int:
    """The cache's last dimension: ``head_dim``, plus the scale's bytes when quantized."""
    if kv_cache_dtype == "auto":
        return head_dim
    if head_dim % SCALE_BYTES:
        raise ValueError(f"a quantized KV cache needs head_dim a multiple of 4, got {head_dim}")
    return head_dim + SCALE_BYTES


def quantize(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` [..., D] as packed rows [..., D + 4] of ``dtype`` (layout in the module docstring),
    one scale per row."""
    q, scale = quantize_last_dim(x, dtype)
    head_dim = x.shape[-1]
    packed = torch.empty((*x.shape[:-1], head_dim + SCALE_BYTES), dtype=dtype, device=x.device)
    packed[..., :head_dim] = q
    packed.view(torch.uint8)[..., head_dim:] = scale[..., None].view(torch.uint8)
    return packed


def scales(packed: torch.Tensor) -> torch.Tensor:
    """The float32 scale of each row of ``packed`` [..., D + 4]; returns [...]."""
    tail = packed.view(torch.uint8)[..., -SCALE_BYTES:].contiguous()
    return tail.view(torch.float32).squeeze(-1)


def dequantize(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Packed rows [..., D + 4] back to values [..., D] of ``dtype``."""
    values = packed[..., :-SCALE_BYTES].to(torch.float32)
    return (values * scales(packed)[..., None]).to(dtype)


def gather(
    kv_cache: torch.Tensor, kind: int, blocks: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Blocks ``blocks`` of the keys (``kind`` 0) or values (1) of ``kv_cache`` as
    [len(blocks), block_size, KV, D] of ``dtype``, dequantized if the cache is quantized."""
    selected = kv_cache[kind].index_select(0, blocks)
    return dequantize(selected, dtype) if is_quantized(kv_cache) else selected
