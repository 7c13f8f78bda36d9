"""Batches in flight while a request is preempted: the stale batch's sample must not reach it.

With pipeline parallelism several batches run at once. A request can be sampled in batch k,
preempted in batch k+1 (blocks short), and, once another request's finish frees blocks,
re-admitted and scheduled to its end in batch k+2, all before batch k returns. Batch k's token
for it is then stale: applied, the request would sample one position twice. An in-process
executor that runs each step only when its result is received overlaps batches exactly as a
pipeline does, without Ray, so the ordering is built here on purpose and fast.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path

import pytest

from tests.worker.engine_helpers import make_engine
from worker.engine import Engine
from worker.executor import LocalExecutor
from worker.executor.local import InProcessExecutor
from worker.sampler import SampledToken
from worker.sampling_params import SamplingParams
from worker.step_input import StepInput


class DeferredExecutor(InProcessExecutor):
    """Runs each step only when its result is received, so ``depth`` batches are in flight,
    each scheduled before the results of the ones ahead of it are known. ``runs_ahead`` as a
    pipeline does not (the same requests in consecutive steps, inputs filled in by the runner);
    ``inputs_filled_in`` counts the rows whose token was still being sampled when scheduled."""

    def __init__(self, local: LocalExecutor, depth: int, runs_ahead: bool = False) -> None:
        self.local = local
        self.runner = local.runner
        self.max_in_flight = depth
        self.runs_ahead = runs_ahead
        self.inputs_filled_in = 0
        self._submitted: deque[StepInput] = deque()

    def submit(self, step: StepInput) -> None:
        self.inputs_filled_in += len(step.pending_inputs)
        self._submitted.append(step)

    def receive(self) -> list[SampledToken]:
        self.local.submit(self._submitted.popleft())
        return self.local.receive()

    def shutdown(self) -> None:
        self.local.shutdown()


Workload = dict[str, tuple[list[int], SamplingParams]]


def workload(seed: int, temperature: float = 0.0) -> Workload:
    """Requests of different lengths finishing at different steps, so that finishes free blocks
    while a preempted request waits."""
    rng = random.Random(seed)
    prompts = [
        [rng.randrange(5, 500) for _ in range(rng.randrange(5, 40))]
        for _ in range(rng.randrange(3, 8))
    ]
    lengths = [rng.randrange(4, 30) for _ in prompts]
    return {
        f"r{i}": (prompt, SamplingParams(n, temperature, seed=i, ignore_eos=True))
        for i, (prompt, n) in enumerate(zip(prompts, lengths, strict=True))
    }


def generate(engine: Engine, requests: Workload) -> dict[str, list[int]]:
    """Every request's tokens; the engine's invariants are checked after every step."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(engine.make_request(rid, prompt, params))
    tokens: dict[str, list[int]] = {rid: [] for rid in requests}
    while engine.has_unfinished():
        for output in engine.step():
            tokens[output.request_id] += output.token_ids
        engine.check_integrity()
    assert engine.kv.pool.num_free == engine.num_blocks
    return tokens


def pipelined(model: Path, depth: int, num_blocks: int, budget: int) -> Engine:
    engine = make_engine(
        model, num_kv_blocks=num_blocks, max_num_batched_tokens=budget, async_scheduling=False
    )
    assert isinstance(engine.executor, LocalExecutor)
    engine.executor = DeferredExecutor(engine.executor, depth)
    return engine


# (workload seed, batches in flight, KV blocks, token budget): each of these applied a stale
# sample to a re-admitted request before the fix (a token repeated in the output).
STALE_ORDERINGS = [(129, 3, 10, 16), (99, 4, 6, 16), (163, 4, 6, 48), (205, 4, 9, 24)]


@pytest.mark.parametrize("seed, depth, num_blocks, budget", STALE_ORDERINGS)
def test_preempted_request_resumes_with_single_rank_tokens(
    demo_model_dir: Path, seed: int, depth: int, num_blocks: int, budget: int
) -> None:
    requests = workload(seed)
    expected = generate(make_engine(demo_model_dir), requests)
    engine = pipelined(demo_model_dir, depth, num_blocks, budget)
    assert generate(engine, requests) == expected
    assert engine.scheduler.num_preemptions > 0


def test_seeded_sampling_survives_preemption_with_batches_in_flight(demo_model_dir: Path) -> None:
    seed, depth, num_blocks, budget = STALE_ORDERINGS[0]
    requests = workload(seed, temperature=0.8)
    expected = generate(make_engine(demo_model_dir), requests)
    engine = pipelined(demo_model_dir, depth, num_blocks, budget)
    assert generate(engine, requests) == expected
    assert engine.scheduler.num_preemptions > 0
