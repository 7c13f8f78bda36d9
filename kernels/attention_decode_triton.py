"""Triton paged decode attention (one query per sequence) with split-KV and a reduction.

Grid of the attention kernel: (sequence, KV head, split). A program takes the query heads that
share its KV head (GQA: H / KV of them, padded to 16 rows for ``tl.dot``) and one split, an equal
run of whole ``TILE_N``-key tiles of that sequence's context; splits past a short sequence's end
exit at once. With one split it writes the output; with several it writes its unnormalised
accumulator, running max and sum, and ``_reduce_splits_kernel`` (grid: sequence, head) rescales
them to the common max and combines::

    out = sum_s acc_s * 2^(m_s - M) / sum_s l_s * 2^(m_s - M),   M = max_s m_s

The split count depends only on host-side sizes, so one step's launches are fixed in advance.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels.attention_metadata import PagedAttentionMetadata
from kernels.attention_tile_triton import (
    LOG2_E,
    attend_paged_range,
    dim_pad,
    dot_precision,
    scale_views,
)
from kernels.layout import unit_last_stride

TILE_N = 32
MAX_SPLITS = 16
# Below this many keys per split the reduction costs more than the extra programs gain.
MIN_TOKENS_PER_SPLIT = 128
# What the split count aims for when a device has no SM count to ask (CPU, interpreter): H100.
DEFAULT_NUM_SMS = 132


@triton.jit
def _split_bounds(seq_len, split, NUM_SPLITS: tl.constexpr, TILE_N: tl.constexpr):  # type: ignore[no-untyped-def]
    # Shared by both kernels so that they agree on which splits hold keys.
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, TILE_N), NUM_SPLITS)
    start = split * tiles_per_split * TILE_N
    return start, tl.minimum(seq_len, start + tiles_per_split * TILE_N)


@triton.jit
def _decode_attention_kernel(  # type: ignore[no-untyped-def]
    out_ptr,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    query_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    block_table_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_bt,
    stride_cb,
    stride_ct,
    stride_ch,
    NUM_HEADS: tl.constexpr,
    QUERIES_PER_KV: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    TILE_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    QUANTIZED: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    kv_start, kv_end = _split_bounds(seq_len, split, NUM_SPLITS, TILE_N)
    if kv_start >= kv_end:
        return
    token = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    head = kv_head * QUERIES_PER_KV + rows
    dims = tl.arange(0, DIM_PAD)
    mask = (rows < QUERIES_PER_KV)[:, None] & (dims < HEAD_DIM)[None, :]
    q_off = token * stride_qt + head[:, None] * stride_qh + dims[None, :]
    q = tl.load(query_ptr + q_off, mask=mask, other=0.0).to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DIM_PAD], tl.float32)
    # The one query is the context's last token: it sees every key.
    query_pos = tl.full([BLOCK_M], 0, tl.int32) + seq_len - 1
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
        kv_start,
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
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        o_off = token * stride_ot + head[:, None] * stride_oh + dims[None, :]
        tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        partial = (seq.to(tl.int64) * NUM_HEADS + head) * NUM_SPLITS + split
        tl.store(partial_out_ptr + partial[:, None] * DIM_PAD + dims[None, :], acc, mask=mask)
        tl.store(partial_max_ptr + partial, m_i, mask=rows < QUERIES_PER_KV)
        tl.store(partial_sum_ptr + partial, l_i, mask=rows < QUERIES_PER_KV)


@triton.jit
def _reduce_splits_kernel(  # type: ignore[no-untyped-def]
    out_ptr,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    stride_ot,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    TILE_N: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    splits = tl.arange(0, SPLITS_PAD)
    starts, ends = _split_bounds(seq_len, splits, NUM_SPLITS, TILE_N)
    # Splits past a short sequence's end wrote nothing; never read them.
    used = (splits < NUM_SPLITS) & (starts < ends)
    partial = (seq.to(tl.int64) * NUM_HEADS + head) * NUM_SPLITS + splits
    m = tl.load(partial_max_ptr + partial, mask=used, other=float("-inf"))
    sums = tl.load(partial_sum_ptr + partial, mask=used, other=0.0)
    weight = tl.math.exp2(m - tl.max(m, axis=0))
    dims = tl.arange(0, DIM_PAD)
    dim_mask = dims < HEAD_DIM
    acc = tl.load(
        partial_out_ptr + partial[:, None] * DIM_PAD + dims[None, :],
        mask=used[:, None] & dim_mask[None, :],
        other=0.0,
    )
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(sums * weight, axis=0)
    token = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    o_off = token * stride_ot + head * stride_oh + dims
    tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=dim_mask)


def choose_num_splits(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device
) -> int:
    """Enough (sequence, KV head, split) programs to fill every SM about four times over, but
    never splits shorter than ``MIN_TOKENS_PER_SPLIT`` keys, and at most ``MAX_SPLITS``."""
    wanted = triton.cdiv(4 * _num_sms(device), max(1, num_seqs * num_kv_heads))
    by_length = triton.cdiv(max_seq_len, MIN_TOKENS_PER_SPLIT)
    return max(1, min(MAX_SPLITS, wanted, by_length))


def paged_decode_attention_triton(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: PagedAttentionMetadata,
    scale: float,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """``paged_attention_ref`` for a batch in which every sequence has exactly one query row.
    ``num_splits`` overrides ``choose_num_splits`` (tests force several)."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads, block_size = kv_cache.shape[3], kv_cache.shape[2]
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens == 0:
        return out
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache must be contiguous in its last dimension")
    query = unit_last_stride(query)
    device = query.device
    splits = num_splits or choose_num_splits(meta.num_seqs, num_kv_heads, meta.max_seq_len, device)
    queries_per_kv = num_heads // num_kv_heads
    pad = dim_pad(head_dim)
    partial_out = partial_max = partial_sum = out  # placeholders: unused with one split
    if splits > 1:
        partial_out = torch.empty((meta.num_seqs, num_heads, splits, pad), device=device)
        partial_max = torch.empty((meta.num_seqs, num_heads, splits), device=device)
        partial_sum = torch.empty((meta.num_seqs, num_heads, splits), device=device)
    seq_lens = meta.seq_lens.to(device)
    query_start_loc = meta.query_start_loc.to(device)
    block_table = meta.block_table.to(device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    k_scales, v_scales, quantized = scale_views(kv_cache)
    _decode_attention_kernel[(meta.num_seqs, num_kv_heads, splits)](
        out,
        partial_out,
        partial_max,
        partial_sum,
        query,
        k_cache,
        v_cache,
        k_scales,
        v_scales,
        block_table,
        seq_lens,
        query_start_loc,
        scale * LOG2_E,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        block_table.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        NUM_HEADS=num_heads,
        QUERIES_PER_KV=queries_per_kv,
        NUM_SPLITS=splits,
        BLOCK_M=max(16, triton.next_power_of_2(queries_per_kv)),
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        DIM_PAD=pad,
        TILE_N=TILE_N,
        DOT_PRECISION=dot_precision(query.dtype),
        QUANTIZED=quantized,
        # 32-key tiles on 8 warps: about 125 registers a thread for bf16 on sm_90, no spills,
        # two programs per SM (64-key tiles on 4 warps spill).
        num_warps=8,
    )
    if splits > 1:
        _reduce_splits_kernel[(meta.num_seqs, num_heads)](
            out,
            partial_out,
            partial_max,
            partial_sum,
            seq_lens,
            query_start_loc,
            out.stride(0),
            out.stride(1),
            NUM_HEADS=num_heads,
            NUM_SPLITS=splits,
            SPLITS_PAD=triton.next_power_of_2(splits),
            HEAD_DIM=head_dim,
            DIM_PAD=pad,
            TILE_N=TILE_N,
        )
    return out


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return DEFAULT_NUM_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count
