"""Priority classes: the scheduler admits the most important waiting request first (lowest
``priority``, FCFS among equals) and preempts the least important running one first."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.worker.engine_helpers import make_engine, run_all, tokens_of
from worker.engine import Engine
from worker.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def _add(engine: Engine, rid: str, prompt: str | list[int], priority: int) -> None:
    request = engine.make_request(rid, prompt, GREEDY)
    engine.add_request(dataclasses.replace(request, priority=priority))


def test_the_most_important_waiting_request_is_admitted_first(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir, max_num_seqs=1)
    for rid, priority in [("low-a", 1), ("low-b", 1), ("high", 0), ("low-c", 1)]:
        _add(engine, rid, f"request {rid} waits its turn", priority)
    finished = []
    while engine.has_unfinished():
        finished += [o.request_id for o in engine.step() if o.finished]
        engine.check_integrity()
    assert finished == ["high", "low-a", "low-b", "low-c"]


def test_the_least_important_running_request_is_preempted_first(demo_model_dir: Path) -> None:
    prompts = {"low": list(range(10, 100)), "high": list(range(200, 290))}
    long = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    want = run_all(make_engine(demo_model_dir), dict(prompts), long)
    # Two requests of 90 + 60 tokens cannot both finish in 14 blocks of 16.
    engine = make_engine(demo_model_dir, num_kv_blocks=14, enable_prefix_caching=False)
    tokens: dict[str, list[int]] = {rid: [] for rid in prompts}
    # The less important request runs first; the other arrives later, so FCFS would preempt it.
    for rid, priority in [("low", 1), ("high", 0)]:
        request = engine.make_request(rid, prompts[rid], long)
        engine.add_request(dataclasses.replace(request, priority=priority))
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    states = {rid: engine._states[rid].request for rid in prompts}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
        engine.check_integrity()
    assert states["low"].num_preemptions > 0 and states["high"].num_preemptions == 0
    assert tokens == {rid: tokens_of(outputs) for rid, outputs in want.items()}
