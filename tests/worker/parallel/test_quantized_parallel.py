"""Quantized weights under tensor parallelism: each rank keeps the scales of the rows it keeps,
and an int8 model split over two processes (gloo) generates what it does on one rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.model.checkpoints import make_hf_model, random_tokens, save_checkpoint
from tests.worker.parallel.ranks import Case, Generation, load_and_generate, spawn_cases
from worker.model import LlamaForCausalLM, ModelConfig, load_model
from worker.model.quantization import quantize_rows
from worker.model.quantize_checkpoint import quantize_checkpoint
from worker.parallel import ParallelConfig, ParallelState

DECODE_STEPS = 32
VOCAB = 509
PROMPTS = [random_tokens(20, VOCAB, seed=1), random_tokens(13, VOCAB, seed=2)]
# Same quantized weights on one rank and on two: only the all-reduce's summation order differs.
TOLERANCE = 1e-4
INTERMEDIATE = 128  # TINY's


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A Llama checkpoint with q/k/v and o_proj biases (4 layers), and its int8 conversion."""
    root = tmp_path_factory.mktemp("quantized-parallel")
    hf = make_hf_model("llama", num_hidden_layers=4, vocab_size=VOCAB, attention_bias=True)
    source = save_checkpoint(hf, root / "llama")
    quantize_checkpoint(source, root / "llama-int8", "int8")
    return source, root / "llama-int8"


def _load_rank(directory: Path, tp_rank: int, quantization: str | None) -> LlamaForCausalLM:
    state = ParallelState(ParallelConfig(tensor_parallel_size=2), tp_rank=tp_rank)
    config = ModelConfig.from_dir(directory)
    return load_model(directory, config, state, quantization=quantization)


@pytest.mark.parametrize("prequantized", [False, True], ids=["load_time", "prequantized"])
def test_column_parallel_rank_keeps_the_scales_of_its_rows(
    checkpoints: tuple[Path, Path], prequantized: bool
) -> None:
    source, converted = checkpoints
    directory = converted if prequantized else source
    whole = load_model(directory, ModelConfig.from_dir(directory), quantization="int8")
    expected = whole.model.layers[2].mlp.gate_up_proj
    half = INTERMEDIATE // 2
    for tp_rank in range(2):
        layer = _load_rank(directory, tp_rank, "int8").model.layers[2].mlp.gate_up_proj
        # Rows of this rank: its half of gate, then its half of up.
        rows = torch.cat(
            [
                torch.arange(tp_rank * half, (tp_rank + 1) * half),
                torch.arange(INTERMEDIATE + tp_rank * half, INTERMEDIATE + (tp_rank + 1) * half),
            ]
        )
        assert torch.equal(layer.weight, expected.weight[rows])
        assert torch.equal(layer.weight_scale, expected.weight_scale[rows])


def test_row_parallel_rank_scales_by_its_own_columns_or_keeps_the_checkpoints_whole(
    checkpoints: tuple[Path, Path],
) -> None:
    source, converted = checkpoints
    original = load_model(source, ModelConfig.from_dir(source)).model.layers[1].self_attn.o_proj
    stored = load_model(converted, ModelConfig.from_dir(converted)).model.layers[1]
    for tp_rank in range(2):
        columns = slice(tp_rank * 32, (tp_rank + 1) * 32)
        # Quantized at load time: this rank's columns quantized on their own.
        layer = _load_rank(source, tp_rank, "int8").model.layers[1].self_attn.o_proj
        qweight, scale = quantize_rows(original.weight[:, columns], "int8")
        assert torch.equal(layer.weight, qweight) and torch.equal(layer.weight_scale, scale)
        # Pre-quantized: the whole rows' scales on every rank, the weight's columns narrowed.
        layer = _load_rank(converted, tp_rank, None).model.layers[1].self_attn.o_proj
        assert torch.equal(layer.weight_scale, stored.self_attn.o_proj.weight_scale)
        assert torch.equal(layer.weight, stored.self_attn.o_proj.weight[:, columns])


@pytest.mark.slow  # two torch.distributed processes
def test_int8_split_over_two_ranks_generates_what_one_rank_does(
    checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    source, converted = checkpoints
    cases = [
        Case("tp2-int8", source, ParallelConfig(2, 1), quantization="int8"),
        Case("tp2-int8-prequantized", converted, ParallelConfig(2, 1)),
    ]
    results = spawn_cases(cases, PROMPTS, DECODE_STEPS, tmp_path)
    single = ParallelState.single()
    reference = load_and_generate(cases[0], single, PROMPTS, DECODE_STEPS)
    assert reference.tokens == load_and_generate(cases[1], single, PROMPTS, DECODE_STEPS).tokens
    assert len(reference.tokens[0]) == len(PROMPTS[0]) + DECODE_STEPS + 1
    for case in cases:
        for rank, result in results[case.name].items():
            assert result.tokens == reference.tokens, f"{case.name} rank {rank}"
    # Pre-quantized, both layouts hold the very same int8 weights and scales.
    assert reference.logits is not None
    for rank, result in results["tp2-int8-prequantized"].items():
        assert _max_difference(result, reference) < TOLERANCE, f"rank {rank}"


def _max_difference(result: Generation, reference: Generation) -> float:
    assert result.logits is not None and reference.logits is not None
    return (result.logits - reference.logits).abs().max().item()
