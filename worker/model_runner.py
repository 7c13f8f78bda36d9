"""A rank's share of a step: build tensors, run the model, sample on the result rank."""

from __future__ import annotations

import torch

from kernels import PagedAttentionMetadata
from worker.model.config import ModelConfig
from worker.model.llama import LlamaForCausalLM
from worker.sampler import SampledToken, Sampler
from worker.step_input import StepInput


class ModelRunner:
    """Owns this rank's model and its paged KV cache, one tensor per local layer:
    [2 (key, value), num_blocks, block_size, num_kv_heads, head_dim]. The rank that ends the
    pipeline samples, keeping each seeded request's generator from step to step."""

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
        self.sampler = Sampler()
        self._generators: dict[str, torch.Generator] = {}

    @staticmethod
    def kv_bytes_per_block(config: ModelConfig, block_size: int) -> int:
        itemsize = torch.empty((), dtype=config.dtype).element_size()
        per_layer = 2 * block_size * config.num_key_value_heads * config.head_dim * itemsize
        return per_layer * config.num_hidden_layers

    @torch.inference_mode()
    def execute(self, step: StepInput) -> list[SampledToken]:
        for request_id in step.finished_ids:
            self._generators.pop(request_id, None)
        meta = PagedAttentionMetadata(
            query_start_loc=torch.tensor(step.query_start_loc, dtype=torch.int32),
            seq_lens=torch.tensor(step.seq_lens, dtype=torch.int32),
            block_table=torch.tensor(step.block_table, dtype=torch.int32),
            slot_mapping=torch.tensor(step.slot_mapping, dtype=torch.int64),
            query_lens_host=step.query_lens,
            seq_lens_host=step.seq_lens,
            block_size=self.block_size,
        )
        hidden = self.model(
            torch.tensor(step.input_ids, dtype=torch.int64),
            torch.tensor(step.positions, dtype=torch.int64),
            self.kv_caches,
            meta,
        )
        if not step.sampling:  # only prefill chunks that do not reach their prompt's end
            return []
        logits = self.model.compute_logits(hidden[torch.tensor(step.logits_rows)])
        return self.sampler.sample(
            logits, [row.params for row in step.sampling], self._generators_for(step)
        )

    def _generators_for(self, step: StepInput) -> list[torch.Generator | None]:
        generators: list[torch.Generator | None] = []
        for row in step.sampling:
            seed = row.params.seed
            if seed is None:
                generators.append(None)
                continue
            generator = self._generators.get(row.request_id)
            if generator is None:
                generator = self._generators[row.request_id] = torch.Generator().manual_seed(seed)
            generators.append(generator)
        return generators
