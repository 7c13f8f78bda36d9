"""Turns a scheduled batch into model inputs, runs the forward pass, and returns logits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels import PagedAttentionMetadata
from worker.model.config import ModelConfig
from worker.model.llama import LlamaForCausalLM
from worker.scheduler import SchedulerOutput


@dataclass(slots=True)
class ModelInput:
    """One step's flattened batch. ``logits_rows`` are the rows whose next token is sampled."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: PagedAttentionMetadata
    logits_rows: torch.Tensor  # [S] int64


class ModelRunner:
    """Owns the model and its paged KV cache, one tensor per layer:
    [2 (key, value), num_blocks, block_size, num_kv_heads, head_dim]."""

    def __init__(
        self, model: LlamaForCausalLM, config: ModelConfig, num_blocks: int, block_size: int
    ) -> None:
        self.model = model
        self.block_size = block_size
        shape = (2, num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        # Zeroed, not empty: padded attention reads masked slots, and 0 * NaN would leak through.
        self.kv_caches = [
            torch.zeros(shape, dtype=config.dtype) for _ in range(config.num_hidden_layers)
        ]

    @staticmethod
    def kv_bytes_per_block(config: ModelConfig, block_size: int) -> int:
        itemsize = torch.empty((), dtype=config.dtype).element_size()
        per_layer = 2 * block_size * config.num_key_value_heads * config.head_dim * itemsize
        return per_layer * config.num_hidden_layers

    def prepare(
        self, batch: SchedulerOutput, block_ids_of: Callable[[str], list[int]]
    ) -> ModelInput:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        tables: list[list[int]] = []
        logits_rows: list[int] = []
        for item in batch.scheduled:
            request = item.request
            start, end = item.start, item.start + item.num_new_tokens
            block_ids = block_ids_of(request.request_id)
            input_ids += request.all_token_ids[start:end]
            positions += range(start, end)
            if end - start == 1:
                slots.append(block_ids[start // bs] * bs + start % bs)
            else:
                slots += [block_ids[p // bs] * bs + p % bs for p in range(start, end)]
            query_start.append(len(input_ids))
            seq_lens.append(end)
            tables.append(block_ids)
            if item.samples:
                logits_rows.append(len(input_ids) - 1)
        width = max(len(t) for t in tables)
        padded = [t + [0] * (width - len(t)) for t in tables]
        meta = PagedAttentionMetadata(
            query_start_loc=torch.tensor(query_start, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_table=torch.tensor(padded, dtype=torch.int32),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            query_lens_host=[s.num_new_tokens for s in batch.scheduled],
            seq_lens_host=seq_lens,
            block_size=bs,
        )
        return ModelInput(
            input_ids=torch.tensor(input_ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            meta=meta,
            logits_rows=torch.tensor(logits_rows, dtype=torch.int64),
        )

    @torch.inference_mode()
    def execute(self, inputs: ModelInput) -> torch.Tensor:
        """Logits [S, vocab] (float32) of the sampling rows."""
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)
        return self.model.compute_logits(hidden[inputs.logits_rows])
