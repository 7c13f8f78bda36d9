"""Triton kernel for neox-style rotary position embedding (see rope_ref).

The cos/sin table already holds any frequency scaling (Llama 3.1's included), so the kernel only
looks rows up by position and rotates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.layout import unit_last_stride


@triton.jit
def _rotate_heads(  # type: ignore[no-untyped-def]
    src_ptr,
    dst_ptr,
    token,
    cos,
    sin,
    stride_st,
    stride_sh,
    stride_dt,
    stride_dh,
    NUM_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HALF_PAD: tl.constexpr,
):
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, HALF_PAD)
    mask = (heads[:, None] < NUM_HEADS) & (dims[None, :] < HALF)
    src = src_ptr + token * stride_st + heads[:, None] * stride_sh + dims[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    dst = dst_ptr + token * stride_dt + heads[:, None] * stride_dh + dims[None, :]
    out_dtype = dst_ptr.dtype.element_ty
    tl.store(dst, (x1 * cos - x2 * sin).to(out_dtype), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(out_dtype), mask=mask)


@triton.jit
def _rope_kernel(  # type: ignore[no-untyped-def]
    positions_ptr,
    query_ptr,
    key_ptr,
    query_out_ptr,
    key_out_ptr,
    cos_sin_ptr,
    stride_cache,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_qot,
    stride_qoh,
    stride_kot,
    stride_koh,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    KV_HEADS_PAD: tl.constexpr,
    HALF_PAD: tl.constexpr,
):
    # One program per token: one cos/sin row serves all of its query and key heads.
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF_PAD)
    row = cos_sin_ptr + position * stride_cache + dims
    cos = tl.load(row, mask=dims < HALF, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(row + HALF, mask=dims < HALF, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(
        query_ptr,
        query_out_ptr,
        token,
        cos,
        sin,
        stride_qt,
        stride_qh,
        stride_qot,
        stride_qoh,
        NUM_HEADS,
        HALF,
        HEADS_PAD,
        HALF_PAD,
    )
    _rotate_heads(
        key_ptr,
        key_out_ptr,
        token,
        cos,
        sin,
        stride_kt,
        stride_kh,
        stride_kot,
        stride_koh,
        NUM_KV_HEADS,
        HALF,
        KV_HEADS_PAD,
        HALF_PAD,
    )


def rotary_embedding_triton(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``query`` [T, H, D] and ``key`` [T, KV, D] by position; ``cos_sin_cache`` is
    [max_positions, D] float32 holding cos in its first half and sin in its second."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    query_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    key_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    if num_tokens == 0:
        return query_out, key_out
    query, key = unit_last_stride(query), unit_last_stride(key)
    cos_sin_cache = unit_last_stride(cos_sin_cache)
    half = head_dim // 2
    _rope_kernel[(num_tokens,)](
        positions.to(query.device),
        query,
        key,
        query_out,
        key_out,
        cos_sin_cache,
        cos_sin_cache.stride(0),
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        query_out.stride(0),
        query_out.stride(1),
        key_out.stride(0),
        key_out.stride(1),
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        HALF=half,
        HEADS_PAD=triton.next_power_of_2(num_heads),
        KV_HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HALF_PAD=triton.next_power_of_2(half),
    )
    return query_out, key_out
