"""Random weights for a model built from config.json alone (``load_format`` "dummy"), so that any
model shape can be benchmarked without a checkpoint."""

from __future__ import annotations

import torch

from worker.model.embedding import VocabParallelEmbedding
from worker.model.linear import QuantizableLinear
from worker.model.llama import LlamaForCausalLM
from worker.model.norm import RMSNorm
from worker.model.quantization import quantize_rows

INIT_STD = 0.02


@torch.no_grad()
def fill_dummy_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Fill this rank's parameters in place, where they already are (device and dtype): norm
    scales 1, everything else normal(0, ``INIT_STD``), vocabulary padding rows 0. Quantized
    weights are drawn in float32 and quantized (int8 and fp8 tensors cannot be drawn).

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
    quantized = [m for m in model.modules() if isinstance(m, QuantizableLinear) and m.quantization]
    quantized_params = {id(p) for m in quantized for p in (m.weight, m.weight_scale)}
    for param in params:
        if id(param) in norm_scales:
            param.fill_(1.0)
        elif id(param) not in quantized_params:
            param.normal_(0.0, INIT_STD, generator=generator)
    for layer in quantized:
        weight = torch.empty(layer.weight.shape, dtype=torch.float32, device=layer.weight.device)
        weight.normal_(0.0, INIT_STD, generator=generator)
        assert layer.quantization is not None and layer.weight_scale is not None
        qweight, scale = quantize_rows(weight, layer.quantization.weights)
        layer.weight.copy_(qweight)
        layer.weight_scale.copy_(scale)
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding):
            module.weight[module.num_real_rows :].zero_()
