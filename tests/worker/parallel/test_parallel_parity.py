"""A model split by tensor and pipeline parallelism over real processes (gloo) generates what
the whole model does in one process: the same greedy tokens, logits within float tolerance.

All cases share one set of spawned processes, started once for the module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.model.checkpoints import make_hf_model, random_tokens, save_checkpoint
from tests.worker.parallel.ranks import Case, Generation, load_and_generate, spawn_cases
from worker.parallel import ParallelConfig, ParallelState

pytestmark = pytest.mark.slow  # several torch.distributed processes

DECODE_STEPS = 32
# Summation order differs between shards (all-reduce of partial sums), so not bit-equal.
TOLERANCE = 1e-4
# Prime, so no tensor-parallel size divides it: every vocabulary shard layout has padding.
VOCAB = 509
PROMPTS = [random_tokens(20, VOCAB, seed=1), random_tokens(13, VOCAB, seed=2)]


def _cases(root: Path) -> list[Case]:
    # Llama with q/k/v and o_proj biases: sharded column biases, a row bias added once.
    llama = save_checkpoint(
        make_hf_model("llama", num_hidden_layers=4, vocab_size=VOCAB, attention_bias=True),
        root / "llama",
    )
    # Qwen3 (per-head q/k norms) with a single KV head and tied embeddings: with tp 2 both ranks
    # keep a copy of the KV head, and the last stage needs its own copy of the embedding table.
    qwen3 = save_checkpoint(
        make_hf_model(
            "qwen3",
            seed=5,  # a seed whose greedy continuations do not fall into a one-token loop
            num_hidden_layers=4,
            vocab_size=VOCAB,
            head_dim=16,
            num_key_value_heads=1,
            tie_word_embeddings=True,
        ),
        root / "qwen3",
    )
    return [
        Case("tp2", llama, ParallelConfig(2, 1)),
        Case("pp2", llama, ParallelConfig(1, 2)),
        Case("tp2xpp2", llama, ParallelConfig(2, 2)),
        Case("tp4-kv2", llama, ParallelConfig(4, 1)),
        Case("tp2xpp2-kv1-tied-split31", qwen3, ParallelConfig(2, 2, (3, 1))),
    ]


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Case], dict[str, dict[int, Generation]], dict[str, Generation]]:
    root = tmp_path_factory.mktemp("parallel")
    cases = _cases(root)
    results = spawn_cases(cases, PROMPTS, DECODE_STEPS, root)
    single = ParallelState.single()
    references = {
        case.name: load_and_generate(case, single, PROMPTS, DECODE_STEPS) for case in cases
    }
    return {case.name: case for case in cases}, results, references


CASE_NAMES = ["tp2", "pp2", "tp2xpp2", "tp4-kv2", "tp2xpp2-kv1-tied-split31"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_split_model_generates_the_same_greedy_tokens_as_one_rank(
    runs: tuple[dict[str, Case], dict[str, dict[int, Generation]], dict[str, Generation]],
    name: str,
) -> None:
    _, results, references = runs
    reference = references[name]
    for rank, result in results[name].items():
        assert result.tokens == reference.tokens, f"rank {rank}"
    assert len(reference.tokens[0]) == len(PROMPTS[0]) + DECODE_STEPS + 1


@pytest.mark.parametrize("name", CASE_NAMES)
def test_every_tp_rank_of_the_last_stage_returns_the_full_vocabulary_logits(
    runs: tuple[dict[str, Case], dict[str, dict[int, Generation]], dict[str, Generation]],
    name: str,
) -> None:
    cases, results, references = runs
    parallel = cases[name].parallel
    expected = references[name].logits
    assert expected is not None
    last_stage = parallel.pipeline_parallel_size - 1
    for tp_rank in range(parallel.tensor_parallel_size):
        logits = results[name][parallel.rank_of(last_stage, tp_rank)].logits
        assert logits is not None and logits.dtype == torch.float32
        assert logits.shape == expected.shape == (DECODE_STEPS + 1, len(PROMPTS), VOCAB)
        difference = (logits - expected).abs().max().item()
        assert difference < TOLERANCE, f"tp_rank {tp_rank}: max |difference| {difference}"
    for rank in range(parallel.rank_of(last_stage, 0)):
        assert results[name][rank].logits is None


def test_stages_hold_the_configured_layers_and_their_share_of_kv_heads(
    runs: tuple[dict[str, Case], dict[str, dict[int, Generation]], dict[str, Generation]],
) -> None:
    _, results, _ = runs
    split = results["tp2xpp2-kv1-tied-split31"]
    assert [split[rank].layer_range for rank in range(4)] == [range(0, 3)] * 2 + [range(3, 4)] * 2
    assert {r.local_kv_heads for r in split.values()} == {1}
    assert [results["pp2"][rank].layer_range for rank in range(2)] == [range(0, 2), range(2, 4)]
    assert {r.local_kv_heads for r in results["tp2"].values()} == {1}
    assert {r.local_kv_heads for r in results["tp4-kv2"].values()} == {1}


def test_tp2_ranks_hold_about_half_the_parameters(
    runs: tuple[dict[str, Case], dict[str, dict[int, Generation]], dict[str, Generation]],
) -> None:
    _, results, references = runs
    total = references["tp2"].param_bytes
    for result in results["tp2"].values():
        # Only the norms and the o_proj bias are whole on every rank.
        assert 0.5 <= result.param_bytes / total <= 0.52
