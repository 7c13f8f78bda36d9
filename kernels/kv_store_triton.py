"""Triton kernel writing new keys and values into the paged cache by slot (see kv_store_ref)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.layout import unit_last_stride


@triton.jit
def _store_kv_kernel(  # type: ignore[no-untyped-def]
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
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
    # A plain copy: no arithmetic, so the values land bit-for-bit as ``.to(cache dtype)`` would.
    key = tl.load(key_ptr + key_off, mask=mask)
    value = tl.load(value_ptr + value_off, mask=mask)
    tl.store(k_cache_ptr + cache_off, key.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + cache_off, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv_triton(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write ``key``/``value`` [T, KV, D] into ``kv_cache`` [2, num_blocks, block_size, KV, D] at
    flat slots ``slot_mapping`` [T]; a slot of -1 is skipped."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    key, value = unit_last_stride(key), unit_last_stride(value)
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache must be contiguous in its last dimension")
    slot_mapping = slot_mapping.to(key.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _store_kv_kernel[(num_tokens,)](
        key,
        value,
        k_cache,
        v_cache,
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
    )
