"""Replicas spanning several ranks (Ray actors, gloo on CPU) generate what one rank does."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch

from tests.worker.engine_helpers import make_engine, run_all, tokens_of
from tests.worker.groups_helpers import run_requests, sequences_of
from tests.worker.test_pipelined_preemption import STALE_ORDERINGS, generate, workload
from worker.engine import Engine
from worker.errors import WorkerFailedError
from worker.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

SHARED = "A system prompt every request starts with, so that the prefix cache gets hits. "
PROMPTS = {f"p{i}": SHARED + q for i, q in enumerate(["Why?", "How many blocks?", "When", "Who"])}
PARAMS = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True, logprobs=2)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Loopback only; enough CPU slots for four ranks on a two-core machine.
    ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(demo_model_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    engine = make_engine(demo_model_dir, max_num_batched_tokens=24)
    return _generate(engine)


def _generate(engine: Engine) -> dict[str, tuple[list[int], list[float]]]:
    """Greedy tokens and their logprobs; a small token budget forces chunked prefill, and the
    shared prefix gives cache hits from the second wave of requests on."""
    result = {}
    for wave in (dict(list(PROMPTS.items())[:1]), dict(list(PROMPTS.items())[1:])):
        for rid, outputs in run_all(engine, wave, PARAMS).items():  # type: ignore[arg-type]
            logprobs = [lp.token_logprob for o in outputs for lp in (o.logprobs or [])]
            result[rid] = (tokens_of(outputs), logprobs)
    assert engine.load_report().prefix_hits > 0
    return result


def _assert_generates(
    engine: Engine, expected: dict[str, tuple[list[int], list[float]]], atol: float
) -> None:
    """The engine's greedy tokens equal ``expected``'s and their logprobs are within ``atol``;
    it is shut down after."""
    try:
        got = _generate(engine)
        for rid, (tokens, logprobs) in expected.items():
            assert got[rid][0] == tokens, rid
            torch.testing.assert_close(
                torch.tensor(got[rid][1]), torch.tensor(logprobs), atol=atol, rtol=0
            )
        engine.check_integrity()
    finally:
        engine.shutdown()


@pytest.mark.parametrize(
    "tp, pp, split",
    [(2, 1, None), (1, 2, (1, 3)), (2, 2, None)],
    ids=["tp2", "pp2-uneven", "tp2xpp2"],
)
def test_parallel_replica_matches_single_rank(
    local_ray: None,
    demo_model_dir: Path,
    reference: dict[str, tuple[list[int], list[float]]],
    tp: int,
    pp: int,
    split: tuple[int, ...] | None,
) -> None:
    engine = make_engine(
        demo_model_dir,
        max_num_batched_tokens=24,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        layer_split=split,
    )
    _assert_generates(engine, reference, atol=1e-4)


def test_beams_and_samples_on_a_tp2_pp2_replica_match_single_rank(
    local_ray: None, demo_model_dir: Path
) -> None:
    """Each rank makes the copy-on-write copies of its own shard; two batches in flight."""
    requests: dict[str, tuple[list[int] | str, SamplingParams]] = {
        "beams": (SHARED, SamplingParams(max_tokens=10, temperature=0.0, beam_width=3, n=2)),
        "samples": (SHARED + "Go", SamplingParams(max_tokens=10, temperature=0.8, seed=4, n=3)),
    }
    expected = run_requests(make_engine(demo_model_dir), requests)
    engine = make_engine(demo_model_dir, tensor_parallel_size=2, pipeline_parallel_size=2)
    try:
        got = run_requests(engine, requests)  # check_integrity after every step
        for rid in requests:
            assert [o.token_ids for o in sequences_of(got, rid)] == [
                o.token_ids for o in sequences_of(expected, rid)
            ], rid
    finally:
        engine.shutdown()


@pytest.mark.parametrize("pp", [2, 4])
def test_pipelined_replica_under_preemption_matches_single_rank(
    local_ray: None, demo_model_dir: Path, pp: int
) -> None:
    """So few KV blocks that requests are preempted while their batches are in flight."""
    seed, _, num_blocks, budget = next(o for o in STALE_ORDERINGS if o[1] == 4)
    requests = workload(seed)
    expected = generate(make_engine(demo_model_dir), requests)
    engine = make_engine(
        demo_model_dir,
        num_kv_blocks=num_blocks,
        max_num_batched_tokens=budget,
        pipeline_parallel_size=pp,
    )
    try:
        assert engine.executor.max_in_flight == pp
        assert generate(engine, requests) == expected  # check_integrity after every step
        assert engine.scheduler.num_preemptions > 0
    finally:
        engine.shutdown()


def test_killed_rank_fails_requests_within_seconds(local_ray: None, demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir, tensor_parallel_size=2, step_timeout_s=30)
    try:
        long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
        for i in range(3):
            engine.add_request(engine.make_request(f"k{i}", f"doomed request {i}", long))
        for _ in range(3):
            engine.step()
        victim = engine.executor.workers[1]  # type: ignore[attr-defined]
        os.kill(ray.get(victim.pid.remote()), signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerFailedError, match=r"rank \d"):
            while engine.has_unfinished():
                engine.step()
        assert time.monotonic() - start < 10
        assert not engine.has_unfinished()
        engine.check_integrity()
        assert engine.kv.pool.num_free == engine.num_blocks
    finally:
        engine.shutdown()


def test_prompt_lookup_on_a_tp2_pp2_replica_matches_single_rank_without_it(
    local_ray: None, demo_model_dir: Path
) -> None:
    """The last stage's first rank verifies every row's drafts; two batches in flight, and a
    small token budget that cuts prompts into chunks and drafts short."""
    prompts: dict[str, list[int] | str] = {
        f"loop{i}": list(range(600 + 9 * i, 630 + 9 * i)) * 3 for i in range(3)
    }
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    expected = run_all(make_engine(demo_model_dir), prompts, params)
    engine = make_engine(
        demo_model_dir,
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        speculative_method="prompt_lookup",
        max_num_batched_tokens=8,
    )
    try:
        got = run_all(engine, prompts, params)
        for rid in prompts:
            assert tokens_of(got[rid]) == tokens_of(expected[rid]), rid
        assert sum(outputs[-1].num_draft_tokens for outputs in got.values()) > 0
    finally:
        engine.shutdown()


def test_a_quantized_cache_on_a_tp2_pp2_replica_matches_single_rank(
    local_ray: None, demo_model_dir: Path
) -> None:
    # Scales are per token and KV head, so sharding heads over ranks quantizes the same rows.
    expected = _generate(
        make_engine(demo_model_dir, max_num_batched_tokens=24, kv_cache_dtype="int8")
    )
    engine = make_engine(
        demo_model_dir,
        max_num_batched_tokens=24,
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        kv_cache_dtype="int8",
    )
    _assert_generates(engine, expected, atol=2e-4)
