"""Queues bounded by predicted wait: a request that the prompt tokens queued ahead of it would
keep waiting longer than ``max_queue_wait_s``, or past its own deadline, is refused at once with
OverloadedError, through the async engine too, and nothing already queued is disturbed."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from pathlib import Path

import pytest

from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine
from worker.engine import Engine
from worker.errors import OverloadedError
from worker.messages import GenerationRequest
from worker.sampling_params import SamplingParams

SHORT = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)


def _prompt(seed: int, length: int = 400) -> list[int]:
    rng = random.Random(seed)  # unrelated prompts: nothing of one is cached for another
    return [rng.randrange(2, 8000) for _ in range(length)]


def _measured(engine: Engine) -> Engine:
    """The engine after one prompt, so that it knows its prefill rate."""
    engine.add_request(engine.make_request("warm-up", _prompt(-1), SHORT))
    while engine.has_unfinished():
        engine.step()
    assert engine.prefill_rate.tokens_per_s > 0
    return engine


def test_a_request_the_queue_would_hold_too_long_is_refused(demo_model_dir: Path) -> None:
    engine = _measured(make_engine(demo_model_dir, max_queue_wait_s=0.2))
    accepted = []
    with pytest.raises(OverloadedError, match=r"about [\d.]+ s .*more than 0.2 s"):
        for i in range(500):
            engine.add_request(engine.make_request(f"q{i}", _prompt(i), SHORT))
            accepted.append(f"q{i}")
    assert 0 < len(accepted) < 500
    engine.check_integrity()  # the refused request left nothing behind
    finished = set()
    while engine.has_unfinished():
        finished |= {o.request_id for o in engine.step() if o.finished}
    assert finished == set(accepted)


def test_a_request_whose_deadline_the_queue_would_pass_is_refused(demo_model_dir: Path) -> None:
    engine = _measured(make_engine(demo_model_dir, max_queue_wait_s=None))
    for i in range(4):
        engine.add_request(engine.make_request(f"q{i}", _prompt(i), SHORT))
    hurried = engine.make_request("hurried", _prompt(9), SHORT)
    with pytest.raises(OverloadedError, match="past its deadline"):
        engine.add_request(dataclasses.replace(hurried, deadline=time.time() + 1e-4))
    engine.add_request(dataclasses.replace(hurried, deadline=time.time() + 600))
    engine.check_integrity()


def test_the_async_engine_raises_the_refusal_itself(demo_model_dir: Path) -> None:
    engine = AsyncEngine(_measured(make_engine(demo_model_dir, max_queue_wait_s=None)))

    async def refused() -> BaseException | None:
        queued = [engine.requests.build(f"q{i}", _prompt(i), SHORT, None) for i in range(4)]
        streams = [engine.generate(r) for r in queued]
        firsts = [asyncio.ensure_future(anext(s)) for s in streams]
        request: GenerationRequest = engine.requests.build("late", _prompt(9), SHORT, None)
        try:
            async for _ in engine.generate(dataclasses.replace(request, deadline=time.time())):
                pass
        except OverloadedError as exc:
            return exc
        finally:
            await asyncio.gather(*firsts)
            for stream in streams:
                await stream.aclose()
        return None

    try:
        assert isinstance(asyncio.run(refused()), OverloadedError)
    finally:
        engine.shutdown()
