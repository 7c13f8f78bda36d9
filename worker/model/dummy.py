"""Random weights for a model built from config.json alone (``load_format`` "dummy"), so that any
model shape can be benchmarked without a checkpoint."""

from __future__ import annotations

import torch

from worker.model.embedding import VocabParallelEmbedding
from worker.model.llama import LlamaForCausalLM
from worker.model.norm import RMSNorm

INIT_STD = 0.02


@torch.no_grad()
def fill_dummy_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Fill this rank's parameters in place, where they already are (device and dtype): norm
    scales 1, everything else normal(0, ``INIT_STD``), vocabulary padding rows 0.

    Each rank fills only the shards it holds, from a generator seeded by ``seed`` and its rank,
    so the same seed and layout give the same weights. Different layouts (tp, pp) give different
    models: no rank ever builds a whole tensor to cut its block from.
    """
    params = list(model.parameters())  # a tied head shares the embedding's table: listed once
    if not params:
        return
    generator = torch.Generator(device=params[0].device)
    # Offset by rank so that TP ranks' shards differ, as they would in a real checkpoint.
    generator.manual_seed(seed * model.parallel.world_size + model.parallel.rank)
    norm_scales = {id(m.weight) for m in model.modules() if isinstance(m, RMSNorm)}
    for param in params:
        if id(param) in norm_scales:
            param.fill_(1.0)
        else:
            param.normal_(0.0, INIT_STD, generator=generator)
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding):
            module.weight[module.num_real_rows :].zero_()
