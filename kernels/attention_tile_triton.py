"""The online-softmax loop over a range of a paged context, shared by both attention kernels.

A program holds a tile of query rows (some heads of a few tokens, all sharing one KV head) and
walks keys ``[kv_start, kv_end)`` of one sequence ``TILE_N`` at a time. Each key's physical
place comes from the block table::

    key n  ->  block_table[n // BLOCK_SIZE] * stride_block + (n % BLOCK_SIZE) * stride_token

so a tile may span several cache blocks. Scores are kept in the log2 domain (``qk_scale``
includes log2(e)) so that ``exp2`` does the softmax. Everything is float32 after the loads: the
Triton interpreter computes garbage on bfloat16 arithmetic, and on a GPU the tf32 dot is exact for
16-bit inputs (their mantissas fit).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import kv_quant

LOG2_E = 1.4426950408889634


@triton.jit
def attend_paged_range(  # type: ignore[no-untyped-def]
    q,
    m_i,
    l_i,
    acc,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    block_table_row_ptr,
    kv_head,
    query_pos,
    kv_start,
    kv_end,
    qk_scale,
    stride_cb,
    stride_ct,
    stride_ch,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    TILE_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    QUANTIZED: tl.constexpr,
):
    """Fold keys ``[kv_start, kv_end)`` into the running ``(m_i, l_i, acc)`` of the rows of ``q``
    [BLOCK_M, DIM_PAD] (float32); row ``r`` sees key ``n`` only if ``n <= query_pos[r]``.
    ``QUANTIZED``: the cache holds 8-bit values, each slot's float32 scale after its
    ``HEAD_DIM`` bytes (kernels/kv_quant.py), read through ``k_scale_ptr``/``v_scale_ptr``, the
    same memory as float32 (see ``scale_views``)."""
    dims = tl.arange(0, DIM_PAD)
    dim_mask = dims < HEAD_DIM
    head_off = kv_head.to(tl.int64) * stride_ch
    for tile_start in range(kv_start, kv_end, TILE_N):
        keys = tile_start + tl.arange(0, TILE_N)
        key_mask = keys < kv_end
        blocks = tl.load(block_table_row_ptr + keys // BLOCK_SIZE, mask=key_mask, other=0)
        slots = blocks.to(tl.int64) * stride_cb + (keys % BLOCK_SIZE) * stride_ct + head_off
        k = tl.load(
            k_cache_ptr + slots[None, :] + dims[:, None],
            mask=dim_mask[:, None] & key_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        v = tl.load(
            v_cache_ptr + slots[:, None] + dims[None, :],
            mask=key_mask[:, None] & dim_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        if QUANTIZED:
            # All strides are multiples of 4 bytes, so a slot's scale is float32 element
            # (slot + HEAD_DIM) / 4 of the same memory.
            scale_off = (slots + HEAD_DIM) // 4
            k = k * tl.load(k_scale_ptr + scale_off, mask=key_mask, other=0.0)[None, :]
            v = v * tl.load(v_scale_ptr + scale_off, mask=key_mask, other=0.0)[:, None]
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
        visible = key_mask[None, :] & (keys[None, :] <= query_pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with no visible key so far keeps m = -inf; shift it by 0 so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new
    return m_i, l_i, acc


def scale_views(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The keys' and values' scale pointers for ``attend_paged_range`` and whether the cache is
    quantized; an unquantized cache passes its own halves, never read."""
    if not kv_quant.is_quantized(kv_cache):
        return kv_cache[0], kv_cache[1], False
    as_float = kv_cache.view(torch.uint8).view(torch.float32)
    return as_float[0], as_float[1], True


def dot_precision(dtype: torch.dtype) -> str:
    """``ieee`` for float32 models (exact, slower), ``tf32`` for 16-bit ones (exact on their
    inputs; only the probabilities lose bits, fewer than a bfloat16 cast would)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def dim_pad(head_dim: int) -> int:
    """Head dimension padded to a power of two of at least 16, the smallest ``tl.dot`` takes."""
    return max(16, triton.next_power_of_2(head_dim))
