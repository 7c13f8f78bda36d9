"""The asyncio API: streaming, abort, cancellation, concurrent requests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, tokens_of
from worker.async_engine import AsyncEngine
from worker.errors import DuplicateRequestError, EngineDeadError, InvalidRequestError
from worker.messages import RequestOutput
from worker.sampling_params import SamplingParams

LONG = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)


@pytest.fixture
def engine(demo_model_dir: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(make_engine(demo_model_dir))
    yield engine
    engine.shutdown()


def _generate(
    engine: AsyncEngine, prompt: str, params: SamplingParams, rid: str
) -> AsyncIterator[RequestOutput]:
    return engine.generate(engine.engine.make_request(rid, prompt, params))


async def _collect(
    engine: AsyncEngine, prompt: str, params: SamplingParams, rid: str
) -> list[RequestOutput]:
    return [out async for out in _generate(engine, prompt, params, rid)]


async def _num_unfinished(engine: AsyncEngine) -> int:
    """Requests in the engine once every command given so far (aborts included) is applied."""
    return await engine.call(lambda e: e.scheduler.num_unfinished)


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
    stream = _generate(engine, "Abort me please", LONG, "x")
    first = await anext(stream)
    assert not first.finished
    assert engine.abort("x")
    assert not engine.abort("never-sent")
    rest = [out async for out in stream]
    assert rest[-1].finish_reason == "abort"
    assert len(tokens_of([first, *rest])) < 200
    await _wait_until_free(engine)


async def test_cancelled_consumer_aborts_request(engine: AsyncEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in _generate(engine, "Cancel me", LONG, "y"):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The stream's abort was queued before this call: the request is gone, long before its
    # 200 tokens could have finished it.
    assert await _num_unfinished(engine) == 0
    await _wait_until_free(engine)


async def test_closed_stream_aborts_request_and_frees_its_id(engine: AsyncEngine) -> None:
    stream = _generate(engine, "Close me early", LONG, "z")
    await anext(stream)
    await stream.aclose()
    assert await _num_unfinished(engine) == 0
    await _wait_until_free(engine)


async def test_reused_id_never_receives_the_old_requests_outputs(engine: AsyncEngine) -> None:
    old = _generate(engine, "The first owner of the id", LONG, "reused")
    await anext(old)
    gate = threading.Event()  # holds the engine thread until the new stream is registered
    held = asyncio.ensure_future(engine.call(lambda e: gate.wait(10)))
    await old.aclose()  # queues the old request's abort behind the gate
    new = asyncio.create_task(_collect(engine, "The second owner", GREEDY_32, "reused"))
    while not new.done() and engine.num_running == 0:
        await asyncio.sleep(0)
    gate.set()  # the old abort's final output is produced now, while the new stream is open
    await held
    outputs = await new
    assert outputs[-1].finish_reason == "length"
    assert len(tokens_of(outputs)) == 32
    await _wait_until_free(engine)


async def test_bad_and_duplicate_requests_raise_before_queueing(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequestError, match="temperature"):
        await anext(_generate(engine, "x", SamplingParams(temperature=-1.0), "bad"))
    stream = _generate(engine, "still running", LONG, "same")
    await anext(stream)
    with pytest.raises(DuplicateRequestError):
        await anext(_generate(engine, "again", GREEDY_32, "same"))
    await stream.aclose()
    await _wait_until_free(engine)


async def test_engine_failure_fails_every_stream_with_a_clear_error(demo_model_dir: Path) -> None:
    engine = AsyncEngine(make_engine(demo_model_dir))
    try:
        assert engine.alive
        stream = _generate(engine, "doomed", LONG, "d")
        await anext(stream)
        # A fault inside the step loop: the forward pass now fails.
        engine.engine.executor.runner.kv_caches.clear()  # type: ignore[attr-defined]
        with pytest.raises(EngineDeadError, match="engine stopped"):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await anext(_generate(engine, "after", GREEDY_32, "after"))
        with pytest.raises(EngineDeadError):
            await engine.call(lambda e: e.load_report())
        assert not engine.alive
    finally:
        engine.shutdown()


async def test_call_runs_between_steps_and_returns_or_raises(engine: AsyncEngine) -> None:
    stream = _generate(engine, "reading state while it runs", LONG, "busy")
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


async def test_shutdown_ends_open_streams_and_refuses_new_ones(demo_model_dir: Path) -> None:
    # A stream left open at shutdown would wait forever, and a request sent after it would
    # queue on a loop that no longer runs: both must fail, and the engine say it is not alive.
    engine = AsyncEngine(make_engine(demo_model_dir))
    stream = _generate(engine, "Running at shutdown", LONG, "open")
    await anext(stream)
    await asyncio.to_thread(engine.shutdown)
    assert not engine.alive
    with pytest.raises(EngineDeadError, match="shut down"):
        async for _ in stream:
            pass
    with pytest.raises(EngineDeadError):
        await _collect(engine, "After shutdown", LONG, "late")
