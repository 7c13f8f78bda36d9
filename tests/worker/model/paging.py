"""Driving our model the way the engine will: paged sequences, one batched step at a time."""

from __future__ import annotations

import random

import torch

from kernels.attention_metadata import PagedAttentionMetadata
from worker.model import LlamaForCausalLM, ModelConfig, torch_dtype

BLOCK_SIZE = 16


class PagedSequence:
    """One sequence's block table and how many of its tokens are already in the KV cache."""

    def __init__(self, block_ids: list[int]) -> None:
        self.block_ids = block_ids
        self.num_cached = 0

    def slot(self, position: int) -> int:
        return self.block_ids[position // BLOCK_SIZE] * BLOCK_SIZE + position % BLOCK_SIZE


def shuffled_block_ids(num_blocks: int, seed: int = 0) -> list[int]:
    """All block ids in a random order, so a sequence's blocks are neither contiguous nor sorted."""
    ids = list(range(num_blocks))
    random.Random(seed).shuffle(ids)
    return ids


def new_kv_caches(config: ModelConfig, num_blocks: int) -> list[torch.Tensor]:
    shape = (2, num_blocks, BLOCK_SIZE, config.num_key_value_heads, config.head_dim)
    return [
        torch.zeros(shape, dtype=torch_dtype(config.dtype)) for _ in range(config.num_hidden_layers)
    ]


def build_step(
    work: list[tuple[PagedSequence, int]],
) -> tuple[torch.Tensor, PagedAttentionMetadata]:
    """Positions [T] and metadata for one step in which each sequence appends its query tokens
    on top of what it has cached; advances each sequence's ``num_cached``."""
    positions: list[int] = []
    slots: list[int] = []
    query_lens: list[int] = []
    seq_lens: list[int] = []
    for seq, query_len in work:
        new_positions = range(seq.num_cached, seq.num_cached + query_len)
        positions.extend(new_positions)
        slots.extend(seq.slot(p) for p in new_positions)
        query_lens.append(query_len)
        seq_lens.append(seq.num_cached + query_len)
        seq.num_cached += query_len
    width = max(len(seq.block_ids) for seq, _ in work)
    block_table = [seq.block_ids + [0] * (width - len(seq.block_ids)) for seq, _ in work]
    starts = [0]
    for query_len in query_lens:
        starts.append(starts[-1] + query_len)
    meta = PagedAttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_table=torch.tensor(block_table, dtype=torch.int32),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_lens_host=query_lens,
        seq_lens_host=seq_lens,
        block_size=BLOCK_SIZE,
    )
    return torch.tensor(positions, dtype=torch.long), meta


def run_step(
    model: LlamaForCausalLM,
    kv_caches: list[torch.Tensor],
    work: list[tuple[PagedSequence, list[int]]],
) -> list[torch.Tensor]:
    """One batched forward in which each sequence appends its tokens; returns each sequence's
    float32 logits [len(tokens), vocab] for its query rows."""
    positions, meta = build_step([(seq, len(tokens)) for seq, tokens in work])
    input_ids = torch.tensor([t for _, tokens in work for t in tokens], dtype=torch.long)
    with torch.no_grad():
        logits = model.compute_logits(model(input_ids, positions, kv_caches, meta))
    return list(logits.split(meta.query_lens_host))
