"""Greedy tokens do not depend on batching, chunking, prefix-cache hits or preemption."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, tokens_of
from worker.engine import Engine

SHARED = "A shared system prompt that every request starts with, long enough to fill blocks. "
QUESTIONS = [
    "Where does the scheduler put a preempted request?",
    "Why are tails evicted first?",
    "Name three sampling parameters.",
    "What does a block hash commit to?",
    "How many tokens fit in one block?",
    "When does chunked prefill help?",
]


def _prompts(engine: Engine) -> dict[str, list[int]]:
    return {f"q{i}": engine.tokenizer.encode(SHARED + q) for i, q in enumerate(QUESTIONS)}


@pytest.fixture(scope="module")
def reference(demo_model_dir: Path) -> dict[str, list[int]]:
    """Each prompt alone, no prefix cache, no chunking: the tokens everything else must match."""
    engine = make_engine(demo_model_dir, enable_prefix_caching=False)
    result = {}
    for rid, prompt in _prompts(engine).items():
        (outputs,) = run_all(engine, {rid: prompt}, GREEDY_32).values()
        result[rid] = tokens_of(outputs)
    return result


def _check(engine: Engine, reference: dict[str, list[int]]) -> Engine:
    outputs = run_all(engine, _prompts(engine), GREEDY_32)
    assert {rid: tokens_of(outs) for rid, outs in outputs.items()} == reference
    assert engine.kv.pool.num_free == engine.num_blocks
    return engine


def test_batched_equals_alone(demo_model_dir: Path, reference: dict[str, list[int]]) -> None:
    _check(make_engine(demo_model_dir, enable_prefix_caching=False), reference)


@pytest.mark.parametrize("budget", [7, 16, 64])
def test_chunked_prefill_equals_alone(
    demo_model_dir: Path, reference: dict[str, list[int]], budget: int
) -> None:
    engine = _check(make_engine(demo_model_dir, max_num_batched_tokens=budget), reference)
    assert engine.times.steps > 32  # prompts really were split over several steps


def test_prefix_cache_hit_equals_miss(
    demo_model_dir: Path, reference: dict[str, list[int]]
) -> None:
    engine = make_engine(demo_model_dir)
    first = next(iter(_prompts(engine).items()))
    run_all(engine, dict([first]), GREEDY_32)  # warm the cache with the shared prefix
    _check(engine, reference)
    report = engine.load_report()
    assert report.prefix_hits > 0.5 * report.prefix_queries * (
        len(QUESTIONS) / (len(QUESTIONS) + 1)
    )


def test_preemption_equals_alone(demo_model_dir: Path, reference: dict[str, list[int]]) -> None:
    # 6 requests of ~60 tokens need ~24 blocks of 16; 14 blocks force recompute preemption.
    engine = make_engine(demo_model_dir, num_kv_blocks=14)
    _check(engine, reference)
    assert engine.scheduler.num_preemptions > 0


def test_load_report_counts_waiting_tokens_net_of_cache_hits(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir)
    prompts = _prompts(engine)
    first = next(iter(prompts.items()))
    run_all(engine, dict([first]), GREEDY_32)
    _, second = list(prompts.items())[1]
    engine.add_request(engine.make_request("queued", second, GREEDY_32))
    cached = len(engine.kv.get_computed_blocks(engine.scheduler.waiting[0])) * 16
    assert cached > 0
    assert engine.load_report().prefill_tokens == len(second) - cached
