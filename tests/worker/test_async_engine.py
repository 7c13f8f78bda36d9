"""The asyncio API: streaming, abort, cancellation, concurrent requests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, tokens_of
from worker.async_engine import AsyncEngine
from worker.errors import DuplicateRequestError, EngineDeadError, InvalidRequestError
from worker.outputs import RequestOutput
from worker.sampling_params import SamplingParams

LONG = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)


@pytest.fixture
def engine(demo_model_dir: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(make_engine(demo_model_dir))
    yield engine
    engine.shutdown()


async def _collect(
    engine: AsyncEngine, prompt: str, params: SamplingParams, rid: str
) -> list[RequestOutput]:
    return [out async for out in engine.generate(prompt, params, request_id=rid)]


async def _wait_until_free(engine: AsyncEngine) -> None:
    for _ in range(200):
        if not engine.engine.has_unfinished():
            break
        await asyncio.sleep(0.01)
    engine.engine.check_integrity()
    assert engine.engine.kv.pool.num_free == engine.engine.num_blocks


async def test_stream_equals_synchronous_engine(engine: AsyncEngine, demo_model_dir: Path) -> None:
    expected = tokens_of(
        run_all(make_engine(demo_model_dir), {"a": "Async stream"}, GREEDY_32)["a"]
    )
    outputs = await _collect(engine, "Async stream", GREEDY_32, "a")
    assert tokens_of(outputs) == expected
    assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
    assert outputs[-1].num_output_tokens == 32
    assert outputs[-1].time_to_first_token_s is not None


async def test_concurrent_streams_each_get_their_own_tokens(engine: AsyncEngine) -> None:
    prompts = {f"c{i}": f"Concurrent prompt number {i}" for i in range(5)}
    results = await asyncio.gather(*(_collect(engine, p, GREEDY_32, r) for r, p in prompts.items()))
    for (rid, _), outputs in zip(prompts.items(), results, strict=True):
        assert {o.request_id for o in outputs} == {rid}
        assert len(tokens_of(outputs)) == 32
    await _wait_until_free(engine)


async def test_abort_ends_stream_and_frees_blocks(engine: AsyncEngine) -> None:
    stream = engine.generate("Abort me please", LONG, request_id="x")
    first = await anext(stream)
    assert not first.finished
    engine.abort("x")
    rest = [out async for out in stream]
    assert rest[-1].finish_reason == "abort"
    assert len(tokens_of([first, *rest])) < 200
    await _wait_until_free(engine)


async def test_cancelled_consumer_aborts_request(engine: AsyncEngine) -> None:
    task = asyncio.create_task(_collect(engine, "Cancel me", LONG, "y"))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_until_free(engine)


async def test_bad_and_duplicate_requests_raise_before_queueing(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError, match="temperature"):
        await anext(engine.generate("x", SamplingParams(temperature=-1.0)))
    stream = engine.generate("still running", LONG, request_id="same")
    await anext(stream)
    with pytest.raises(DuplicateRequestError):
        await anext(engine.generate("again", GREEDY_32, request_id="same"))
    await stream.aclose()
    await _wait_until_free(engine)


async def test_engine_failure_fails_every_stream_with_a_clear_error(demo_model_dir: Path) -> None:
    engine = AsyncEngine(make_engine(demo_model_dir))
    try:
        assert engine.alive
        stream = engine.generate("doomed", LONG, request_id="d")
        await anext(stream)
        # A fault inside the step loop: the forward pass now fails.
        engine.engine.executor.runner.kv_caches.clear()  # type: ignore[attr-defined]
        with pytest.raises(EngineDeadError, match="engine stopped"):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await anext(engine.generate("after", GREEDY_32))
        with pytest.raises(EngineDeadError):
            await engine.call(lambda e: e.load_report())
        assert not engine.alive
    finally:
        engine.shutdown()


async def test_call_runs_between_steps_and_returns_or_raises(engine: AsyncEngine) -> None:
    stream = engine.generate("reading state while it runs", LONG, request_id="busy")
    await anext(stream)
    report = await engine.call(lambda e: e.load_report())
    assert report.num_running + report.num_waiting == 1
    with pytest.raises(ZeroDivisionError):  # the caller's error, not the loop's
        await engine.call(lambda e: 1 // 0)
    assert engine.alive
    engine.abort("busy")
    async for _ in stream:
        pass
    await _wait_until_free(engine)
    await engine.call(lambda e: e.check_integrity())


async def test_call_after_shutdown_is_refused(demo_model_dir: Path) -> None:
    engine = AsyncEngine(make_engine(demo_model_dir))
    engine.shutdown()
    with pytest.raises(EngineDeadError):
        await engine.call(lambda e: e.load_report())
