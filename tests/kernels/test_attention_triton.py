"""Triton paged attention equals the torch reference: decodes (split-KV), prefill chunks over a
cached prefix, and mixed batches, with GQA."""

from __future__ import annotations

import pytest
import torch

from kernels.attention_decode_triton import choose_num_splits, paged_decode_attention_triton
from kernels.attention_metadata import PagedAttentionMetadata
from kernels.attention_ref import paged_attention_ref
from kernels.attention_triton import paged_attention_triton, varlen_attention_triton
from tests.kernels.helpers import DEVICE, DTYPES, assert_close_to, paged_step, randn, reference
from tests.worker.model.paging import BLOCK_SIZE

HEAD_DIM = 32
# (query heads, KV heads): GQA ratios 1, 2 and 4.
HEADS = [pytest.param(2, 2, id="mha"), pytest.param(4, 2, id="gqa2"), pytest.param(8, 2, id="gqa4")]
# (cached tokens, query tokens) per sequence; odd lengths, so last blocks are partly filled.
DECODES = [(36, 1), (16, 1), (4, 1)]
LONG_DECODES = [(299, 1), (40, 1)]
MIXED = [(21, 70), (36, 1), (0, 19), (9, 1)]


def make_inputs(
    work: list[tuple[int, int]], heads: int, kv_heads: int, dtype: torch.dtype, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, PagedAttentionMetadata]:
    num_blocks, meta = paged_step(work)
    num_tokens = sum(query_len for _, query_len in work)
    # q is a view into a fused qkv row, as the model hands it over: its token stride is wider.
    qkv = randn((num_tokens, (heads + 2 * kv_heads) * head_dim), dtype, seed=1)
    query = qkv[:, : heads * head_dim].view(num_tokens, heads, head_dim)
    kv_cache = randn((2, num_blocks, BLOCK_SIZE, kv_heads, head_dim), dtype, seed=2)
    return query, kv_cache, meta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads"), HEADS)
def test_decode_batch_matches_reference(dtype: torch.dtype, heads: int, kv_heads: int) -> None:
    query, kv_cache, meta = make_inputs(DECODES, heads, kv_heads, dtype, HEAD_DIM)
    scale = HEAD_DIM**-0.5
    out = paged_attention_triton(query, kv_cache, meta, scale)
    assert out.dtype == dtype and out.device.type == DEVICE.type
    assert_close_to(out, reference(paged_attention_ref, query, kv_cache, meta, scale), dtype)


def test_decodes_sharing_prefix_blocks_read_them_for_each_sequence() -> None:
    # A prefix-cache hit: sequences 0 and 1 (37 and 17 tokens) start with the same full block.
    query, kv_cache, meta = make_inputs(DECODES, 4, 2, torch.float32, HEAD_DIM)
    meta.block_table[1, 0] = meta.block_table[0, 0]
    out = paged_attention_triton(query, kv_cache, meta, 0.2)
    assert_close_to(out, reference(paged_attention_ref, query, kv_cache, meta, 0.2), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads"), HEADS)
def test_long_decode_split_over_several_programs_matches_reference(
    dtype: torch.dtype, heads: int, kv_heads: int
) -> None:
    query, kv_cache, meta = make_inputs(LONG_DECODES, heads, kv_heads, dtype, HEAD_DIM)
    assert choose_num_splits(meta.num_seqs, kv_heads, meta.max_seq_len, DEVICE) > 1
    scale = HEAD_DIM**-0.5
    expected = reference(paged_attention_ref, query, kv_cache, meta, scale)
    assert_close_to(paged_attention_triton(query, kv_cache, meta, scale), expected, dtype)
    # More splits than the short sequence has tiles: its later splits hold no keys at all.
    forced = paged_decode_attention_triton(query, kv_cache, meta, scale, num_splits=5)
    assert_close_to(forced, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads"), HEADS)
def test_mixed_batch_of_prefill_chunks_and_decodes_matches_reference(
    dtype: torch.dtype, heads: int, kv_heads: int
) -> None:
    # A chunk of several query blocks on a cached prefix, decodes, and a fresh prefill.
    query, kv_cache, meta = make_inputs(MIXED, heads, kv_heads, dtype, HEAD_DIM)
    scale = HEAD_DIM**-0.5
    out = paged_attention_triton(query, kv_cache, meta, scale)
    assert_close_to(out, reference(paged_attention_ref, query, kv_cache, meta, scale), dtype)


def test_varlen_kernel_alone_handles_a_decode_only_batch() -> None:
    query, kv_cache, meta = make_inputs(DECODES, 4, 2, torch.float32, HEAD_DIM)
    out = varlen_attention_triton(query, kv_cache, meta, 0.2)
    assert_close_to(out, reference(paged_attention_ref, query, kv_cache, meta, 0.2), torch.float32)


@pytest.mark.parametrize("work", [DECODES, MIXED], ids=["decode", "mixed"])
def test_head_dim_not_a_power_of_two_is_padded(work: list[tuple[int, int]]) -> None:
    query, kv_cache, meta = make_inputs(work, 6, 2, torch.float16, head_dim=24)
    out = paged_attention_triton(query, kv_cache, meta, 0.2)
    expected = reference(paged_attention_ref, query, kv_cache, meta, 0.2)
    assert_close_to(out, expected, torch.float16)


def test_decode_launched_for_a_captured_graph_reads_true_lengths_from_the_device() -> None:
    # A CUDA graph freezes launch sizes: decode is captured with every sequence at the longest
    # context (host lengths) and a block table that wide; replays hold the true lengths on the
    # device only, and a padding row of length 1 (worker/cuda_graphs.py).
    query, kv_cache, meta = make_inputs(DECODES, 4, 2, torch.float32, HEAD_DIM)
    capacity, n = 1024, meta.num_seqs
    width = capacity // BLOCK_SIZE
    table = torch.zeros((n + 1, width), dtype=torch.int32, device=meta.block_table.device)
    table[:n, : meta.block_table.shape[1]] = meta.block_table
    graph_meta = PagedAttentionMetadata(
        query_start_loc=torch.arange(n + 2, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.cat([meta.seq_lens, meta.seq_lens.new_ones(1)]),
        block_table=table,
        slot_mapping=torch.cat([meta.slot_mapping, meta.slot_mapping.new_full((1,), -1)]),
        query_lens_host=[1] * (n + 1),
        seq_lens_host=[capacity] * (n + 1),
        block_size=BLOCK_SIZE,
    )
    padded_query = torch.cat([query, query[:1]])
    assert choose_num_splits(n + 1, 2, capacity, DEVICE) > 1
    out = paged_attention_triton(padded_query, kv_cache, graph_meta, 0.2)
    expected = reference(paged_attention_ref, query, kv_cache, meta, 0.2)
    assert_close_to(out[:n], expected, torch.float32)
