"""A scheduler that runs ahead (the next step prepared while the current one runs, its inputs
that wait on the current one's tokens filled in by the runner) gives exactly the tokens of one
that does not, through preemption, seeded sampling, stops and aborts, and leaks no block.

Built the way the pipeline's stale-sample test is, with its executor that runs each step only
when its result is received, so the second step in flight is always scheduled before the first's
tokens are known, deterministically and without a thread; then once through the real thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from tests.worker.engine_helpers import make_engine
from tests.worker.test_pipelined_preemption import (
    STALE_ORDERINGS,
    DeferredExecutor,
    generate,
    workload,
)
from worker.engine import Engine
from worker.errors import WorkerFailedError
from worker.executor import LocalExecutor, OverlappingExecutor
from worker.sampling_params import SamplingParams


def ran_ahead(engine: Engine) -> int:
    assert isinstance(engine.executor, DeferredExecutor)
    return engine.executor.inputs_filled_in


def run_ahead(model: Path, **overrides: object) -> Engine:
    engine = make_engine(model, async_scheduling=True, **overrides)
    assert isinstance(engine.executor, OverlappingExecutor)
    runner = engine.executor.runner
    engine.executor.shutdown()
    engine.executor = DeferredExecutor(LocalExecutor(runner), depth=2, runs_ahead=True)
    return engine


def plain(model: Path, **overrides: object) -> Engine:
    return make_engine(model, async_scheduling=False, **overrides)


@pytest.mark.parametrize("seed, num_blocks, budget", [(s, b, t) for s, _, b, t in STALE_ORDERINGS])
def test_same_tokens_through_preemption(
    demo_model_dir: Path, seed: int, num_blocks: int, budget: int
) -> None:
    requests = workload(seed)
    expected = generate(plain(demo_model_dir), requests)
    engine = run_ahead(demo_model_dir, num_kv_blocks=num_blocks, max_num_batched_tokens=budget)
    assert generate(engine, requests) == expected
    assert engine.scheduler.num_preemptions > 0
    assert ran_ahead(engine) > 0


def test_seeded_sampling_is_unchanged(demo_model_dir: Path) -> None:
    requests = workload(129, temperature=0.8)
    expected = generate(plain(demo_model_dir), requests)
    engine = run_ahead(demo_model_dir, num_kv_blocks=10, max_num_batched_tokens=16)
    assert generate(engine, requests) == expected


def test_a_stop_never_lets_the_token_sampled_ahead_out(demo_model_dir: Path) -> None:
    # Each request stops on a token it produces mid-way: the step already scheduled past it
    # samples one more token, which must be dropped.
    requests = workload(7)
    free_run = generate(plain(demo_model_dir), requests)
    stopping = {
        rid: (
            prompt,
            SamplingParams(params.max_tokens, 0.0, stop_token_ids=[free_run[rid][2]]),
        )
        for rid, (prompt, params) in requests.items()
    }
    expected = generate(plain(demo_model_dir), stopping)
    assert all(len(tokens) <= 3 for tokens in expected.values())
    assert generate(run_ahead(demo_model_dir), stopping) == expected


def test_nothing_is_scheduled_past_a_length_limit(demo_model_dir: Path) -> None:
    # The step that samples a request's last token is the last to hold it: running ahead of it
    # would compute a position no one reads.
    requests = {"short": (list(range(10, 30)), SamplingParams(5, 0.0, ignore_eos=True))}
    reference = plain(demo_model_dir)
    generate(reference, requests)
    engine = run_ahead(demo_model_dir)
    generate(engine, requests)
    assert engine.times.steps == reference.times.steps
    assert ran_ahead(engine) == 4  # every decode but the first was scheduled ahead


def test_abort_with_a_step_in_flight_frees_every_block(demo_model_dir: Path) -> None:
    engine = run_ahead(demo_model_dir)
    params = SamplingParams(max_tokens=50, ignore_eos=True)
    for rid in ("a", "b"):
        engine.add_request(engine.make_request(rid, list(range(10, 40)), params))
    engine.step()
    engine.step()
    assert engine.abort("a") is not None  # a step holding "a" is still in flight
    while engine.has_unfinished():
        for output in engine.step():
            assert output.request_id == "b"
        engine.check_integrity()
    assert engine.kv.pool.num_free == engine.num_blocks


def test_the_step_thread_gives_the_same_tokens(demo_model_dir: Path) -> None:
    requests = workload(163)
    expected = generate(plain(demo_model_dir), requests)
    engine = make_engine(demo_model_dir, async_scheduling=True)
    assert isinstance(engine.executor, OverlappingExecutor)
    assert generate(engine, requests) == expected
    engine.shutdown()


def test_by_default_only_a_gpu_runs_ahead(demo_model_dir: Path) -> None:
    # On a CPU the forward pass is the Python thread's own work: nothing to overlap with.
    engine = make_engine(demo_model_dir)
    expected = OverlappingExecutor if torch.cuda.is_available() else LocalExecutor
    assert type(engine.executor) is expected


def test_a_step_that_never_finishes_fails_the_engine_within_its_timeout(
    demo_model_dir: Path,
) -> None:
    engine = make_engine(demo_model_dir, async_scheduling=True, step_timeout_s=0.5)
    assert isinstance(engine.executor, OverlappingExecutor)
    release = threading.Event()
    engine.executor.runner.execute = lambda step: release.wait(30)  # type: ignore[method-assign]
    engine.add_request(engine.make_request("stuck", list(range(10, 30)), SamplingParams(4)))
    try:
        with pytest.raises(WorkerFailedError, match=r"within 0\.5 s"):
            engine.step()
        engine.check_integrity()
        assert engine.kv.pool.num_free == engine.num_blocks
    finally:
        # Let the stuck step end and its thread stop here: a thread still holding the model
        # when the interpreter exits would free its tensors during finalization (an abort).
        release.set()
        engine.shutdown()
