"""Triton kernel writing new keys and values into the paged cache by slot (see kv_store_ref)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import eight_bit
from kernels.attention_tile_triton import scale_views
from kernels.layout import unit_last_stride


@triton.jit
def _store_kv_kernel(  # type: ignore[no-untyped-def]
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    slot_mapping_ptr,
    block_size,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_ct,
    stride_ch,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    DIM_PAD: tl.constexpr,
    QMAX: tl.constexpr,
):
    # One program per token: all of its heads at once.
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, DIM_PAD)
    mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM)
    block = slot // block_size
    offset = slot % block_size
    cache_off = block * stride_cb + offset * stride_ct + heads[:, None] * stride_ch + dims[None, :]
    key_off = token.to(tl.int64) * stride_kt + heads[:, None] * stride_kh + dims[None, :]
    value_off = token.to(tl.int64) * stride_vt + heads[:, None] * stride_vh + dims[None, :]
    key = tl.load(key_ptr + key_off, mask=mask, other=0.0)
    value = tl.load(value_ptr + value_off, mask=mask, other=0.0)
    if QMAX > 0:
        # Quantized (kernels/kv_quant.py): each head's values over its own float32 scale, which
        # goes in the 4 bytes after them, float32 element (slot offset + HEAD_DIM) / 4.
        scale_off = (block * stride_cb + offset * stride_ct + heads * stride_ch + HEAD_DIM) // 4
        key = _quantize_rows(key.to(tl.float32), k_scale_ptr + scale_off, heads, NUM_KV_HEADS, QMAX)
        value = _quantize_rows(
            value.to(tl.float32), v_scale_ptr + scale_off, heads, NUM_KV_HEADS, QMAX
        )
    # Unquantized, a plain copy: the values land bit-for-bit as ``.to(cache dtype)`` would.
    tl.store(k_cache_ptr + cache_off, key.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + cache_off, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _quantize_rows(x, scale_ptrs, heads, NUM_KV_HEADS: tl.constexpr, QMAX: tl.constexpr):  # type: ignore[no-untyped-def]
    # kv_quant.quantize: symmetric, amax / QMAX per row (127 for int8, 448 for fp8 e4m3).
    amax = tl.max(tl.abs(x), axis=1)
    scale = tl.where(amax > 0.0, amax / QMAX, 1.0)
    tl.store(scale_ptrs, scale, mask=heads < NUM_KV_HEADS)
    q = tl.minimum(tl.maximum(x / scale[:, None], -QMAX), QMAX)
    magnitude = tl.abs(q)
    if QMAX == 448.0:
        # Round to e4m3's grid (3 mantissa bits, subnormal step 2^-9) here, so that the cast is
        # exact: the Triton interpreter's own fp8 cast drops the carry of a rounding that
        # crosses a power of two (126.9 became 64, not 128).
        exponent = tl.floor(tl.log2(tl.maximum(magnitude, 0.015625)))
        step = tl.exp2(exponent - 3.0)
        magnitude = tl.floor(magnitude / step + 0.5) * step
    else:
        magnitude = tl.floor(magnitude + 0.5)
    return tl.where(q >= 0.0, magnitude, -magnitude)


def store_kv_triton(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write ``key``/``value`` [T, KV, D] into ``kv_cache`` [2, num_blocks, block_size, KV, D] at
    flat slots ``slot_mapping`` [T]; a slot of -1 is skipped. A quantized cache (kv_quant) gets
    each row quantized with its own scale."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    key, value = unit_last_stride(key), unit_last_stride(value)
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache must be contiguous in its last dimension")
    slot_mapping = slot_mapping.to(key.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    k_scales, v_scales, quantized = scale_views(kv_cache)
    _store_kv_kernel[(num_tokens,)](
        key,
        value,
        k_cache,
        v_cache,
        k_scales,
        v_scales,
        slot_mapping,
        kv_cache.shape[2],
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        DIM_PAD=triton.next_power_of_2(head_dim),
        QMAX=eight_bit.qmax(kv_cache.dtype) if quantized else 0.0,
    )
