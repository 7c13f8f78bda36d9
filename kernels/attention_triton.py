"""Triton paged attention for a mixed batch of prefill chunks and decodes (see attention_ref).

Two kernels, chosen per step, as vLLM's Triton backend does:

- every row a decode (the common steady state): ``attention_decode_triton``, split-KV over the
  context and a reduction, so that a small batch of long contexts still fills the GPU;
- any prefill chunk in the batch: ``_varlen_attention_kernel`` below does *all* rows, decodes
  included, in one launch. A decode there is just a sequence with one query row; splitting
  the batch into two launches would need a second set of metadata per step for little gain,
  since in a mixed step the prefill chunk's programs already occupy the GPU.

Grid of the varlen kernel: (query block, KV head). A query block is ``BLOCK_Q`` consecutive query
tokens of one sequence times the ``H / KV`` heads sharing the KV head: ``BLOCK_M`` rows::

    row r  ->  token first_row + r // QUERIES_PER_KV,  head kv_head * QUERIES_PER_KV + r % QPK

Sequence ``i``'s query blocks are numbered from ``query_start_loc[i] // BLOCK_Q + i``, an upper
bound on the blocks of the sequences before it, so the grid is ``T // BLOCK_Q + num_seqs`` with no
host-side scan, each program finds its sequence by binary search, and the few spare programs
exit at once. Causality bounds the walk: a block stops at its last query's position.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention_decode_triton import paged_decode_attention_triton
from kernels.attention_metadata import PagedAttentionMetadata
from kernels.attention_tile_triton import (
    LOG2_E,
    attend_paged_range,
    dim_pad,
    dot_precision,
    scale_views,
)
from kernels.layout import unit_last_stride

# 64 query rows reuse each loaded key tile 64 times; with 32-key tiles on 8 warps that fits
# sm_90's registers in bfloat16 without spilling (tests/kernels/gpu_compile.py reports it).
TILE_N = 32
ROWS_PER_BLOCK = 64


@triton.jit
def _find_seq(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q: tl.constexpr):  # type: ignore[no-untyped-def]
    # The last sequence whose first query block is at or before ``q_block``.
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _varlen_attention_kernel(  # type: ignore[no-untyped-def]
    out_ptr,
    query_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    block_table_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    num_seqs,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_bt,
    stride_cb,
    stride_ct,
    stride_ch,
    QUERIES_PER_KV: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    TILE_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    QUANTIZED: tl.constexpr,
):
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_seq(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    first_row = (q_block - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    if first_row >= query_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - query_len

    rows = tl.arange(0, BLOCK_M)
    token_in_chunk = first_row + rows // QUERIES_PER_KV
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    row_mask = (rows < BLOCK_Q * QUERIES_PER_KV) & (token_in_chunk < query_len)
    dims = tl.arange(0, DIM_PAD)
    mask = row_mask[:, None] & (dims < HEAD_DIM)[None, :]
    token = (q_start + token_in_chunk).to(tl.int64)
    q_off = token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :]
    q = tl.load(query_ptr + q_off, mask=mask, other=0.0).to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DIM_PAD], tl.float32)
    # Query j of the chunk sits at context position context_len + j.
    query_pos = context_len + token_in_chunk
    kv_end = tl.minimum(seq_len, context_len + first_row + BLOCK_Q)
    m_i, l_i, acc = attend_paged_range(
        q,
        m_i,
        l_i,
        acc,
        k_cache_ptr,
        v_cache_ptr,
        k_scale_ptr,
        v_scale_ptr,
        block_table_ptr + seq.to(tl.int64) * stride_bt,
        kv_head,
        query_pos,
        0,
        kv_end,
        qk_scale,
        stride_cb,
        stride_ct,
        stride_ch,
        BLOCK_SIZE,
        HEAD_DIM,
        DIM_PAD,
        TILE_N,
        DOT_PRECISION,
        QUANTIZED,
    )
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_off = token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
    tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=mask)


def paged_attention_triton(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: PagedAttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of ``query`` [T, H, D] over the paged ``kv_cache``
    [2, num_blocks, block_size, KV, D]; GQA when H is a multiple of KV. Returns [T, H, D]."""
    if meta.num_seqs > 0 and max(meta.query_lens_host) == 1:
        return paged_decode_attention_triton(query, kv_cache, meta, scale)
    return varlen_attention_triton(query, kv_cache, meta, scale)


def varlen_attention_triton(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: PagedAttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """``paged_attention_ref`` by the varlen kernel alone, whatever the batch holds."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads, block_size = kv_cache.shape[3], kv_cache.shape[2]
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens == 0:
        return out
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache must be contiguous in its last dimension")
    query = unit_last_stride(query)
    queries_per_kv = num_heads // num_kv_heads
    block_m = max(ROWS_PER_BLOCK, triton.next_power_of_2(queries_per_kv))
    block_q = block_m // queries_per_kv
    block_table = meta.block_table.to(query.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    k_scales, v_scales, quantized = scale_views(kv_cache)
    grid = (num_tokens // block_q + meta.num_seqs, num_kv_heads)
    _varlen_attention_kernel[grid](
        out,
        query,
        k_cache,
        v_cache,
        k_scales,
        v_scales,
        block_table,
        meta.seq_lens.to(query.device),
        meta.query_start_loc.to(query.device),
        meta.num_seqs,
        scale * LOG2_E,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        block_table.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        QUERIES_PER_KV=queries_per_kv,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        DIM_PAD=dim_pad(head_dim),
        TILE_N=TILE_N,
        DOT_PRECISION=dot_precision(query.dtype),
        QUANTIZED=quantized,
        num_warps=8,
    )
    return out
