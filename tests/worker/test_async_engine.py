"""The asyncio API: streaming, abort, cancellation, concurrent requests, failures; the same
tests with the step loop on a thread and in an engine process of its own."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, tokens_of
from worker.async_engine import AsyncEngine
from worker.config import EngineConfig
from worker.engine import Engine
from worker.errors import (
    DuplicateRequestError,
    EngineDeadError,
    InvalidRequestError,
    ModelLoadError,
)
from worker.messages import RequestOutput
from worker.sampling_params import SamplingParams

LONG = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)


Factory = Callable[[], AsyncEngine]


@pytest.fixture(params=["thread", "process"])
def new_engine(request: pytest.FixtureRequest, demo_model_dir: Path) -> Iterator[Factory]:
    """Makes AsyncEngines over the demo model, in the parametrized mode; shuts them down."""
    made: list[AsyncEngine] = []

    def make() -> AsyncEngine:
        if request.param == "thread":
            engine = AsyncEngine(make_engine(demo_model_dir))
        else:
            engine = AsyncEngine.spawn(EngineConfig(model=demo_model_dir, dtype="float32"), 1)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.shutdown()


@pytest.fixture
def engine(new_engine: Factory) -> AsyncEngine:
    return new_engine()


# Run inside the engine (by reference, so that the engine process can unpickle them too).


def _unfinished(engine: Engine) -> int:
    return engine.scheduler.num_unfinished


def _all_blocks_free(engine: Engine) -> bool:
    engine.check_integrity()
    return not engine.has_unfinished() and engine.kv.pool.num_free == engine.num_blocks


def _break_the_forward_pass(engine: Engine) -> None:
    engine.executor.runner.kv_caches.clear()  # type: ignore[attr-defined]


def _wait_for_file(path: Path, engine: Engine) -> None:
    for _ in range(1000):
        if path.exists():
            return
        time.sleep(0.01)
    raise TimeoutError(f"{path} never appeared")


class _TwoArgumentError(Exception):
    """Pickles, but does not unpickle: its __init__ needs two arguments."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def _raise_two_argument_error(engine: Engine) -> None:
    raise _TwoArgumentError(1, 0)


def _divide_by_zero(engine: Engine) -> int:
    return 1 // 0


def _generate(
    engine: AsyncEngine, prompt: str, params: SamplingParams, rid: str
) -> AsyncIterator[RequestOutput]:
    return engine.generate(engine.requests.build(rid, prompt, params, None))


async def _collect(
    engine: AsyncEngine, prompt: str, params: SamplingParams, rid: str
) -> list[RequestOutput]:
    return [out async for out in _generate(engine, prompt, params, rid)]


async def _num_unfinished(engine: AsyncEngine) -> int:
    """Requests in the engine once every command given so far (aborts included) is applied."""
    return await engine.call(_unfinished)


async def _wait_until_free(engine: AsyncEngine) -> None:
    for _ in range(200):
        if await engine.call(_all_blocks_free):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("blocks still held")


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


async def test_reused_id_never_receives_the_old_requests_outputs(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    old = _generate(engine, "The first owner of the id", LONG, "reused")
    await anext(old)
    gate = tmp_path / "gate"  # holds the step loop until the new stream is registered
    held = asyncio.ensure_future(engine.call(functools.partial(_wait_for_file, gate)))
    await old.aclose()  # queues the old request's abort behind the gate
    new = asyncio.create_task(_collect(engine, "The second owner", GREEDY_32, "reused"))
    while not new.done() and engine.num_running == 0:
        await asyncio.sleep(0)
    gate.touch()  # the old abort's final output is produced now, while the new stream is open
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


async def test_engine_failure_fails_every_stream_with_a_clear_error(engine: AsyncEngine) -> None:
    assert engine.alive
    stream = _generate(engine, "doomed", LONG, "d")
    await anext(stream)
    await engine.call(_break_the_forward_pass)  # a fault inside the step loop
    with pytest.raises(EngineDeadError, match="engine stopped"):
        async for _ in stream:
            pass
    with pytest.raises(EngineDeadError):
        await anext(_generate(engine, "after", GREEDY_32, "after"))
    with pytest.raises(EngineDeadError):
        await engine.call(Engine.load_report)
    assert not engine.alive


async def test_call_runs_between_steps_and_returns_or_raises(engine: AsyncEngine) -> None:
    stream = _generate(engine, "reading state while it runs", LONG, "busy")
    await anext(stream)
    report = await engine.call(Engine.load_report)
    assert report.num_running + report.num_waiting == 1
    with pytest.raises(ZeroDivisionError):  # the caller's error, not the loop's
        await engine.call(_divide_by_zero)
    assert engine.alive
    engine.abort("busy")
    async for _ in stream:
        pass
    await _wait_until_free(engine)


async def test_an_error_that_cannot_travel_still_reaches_the_caller(engine: AsyncEngine) -> None:
    # In process: the error itself. From an engine process: a RuntimeError naming it, since it
    # cannot be unpickled here; either way the engine serves on.
    with pytest.raises((_TwoArgumentError, RuntimeError), match="1/0"):
        await engine.call(_raise_two_argument_error)
    assert engine.alive
    assert len(tokens_of(await _collect(engine, "still serving", GREEDY_32, "s"))) == 32


async def test_call_after_shutdown_is_refused(engine: AsyncEngine) -> None:
    engine.shutdown()
    with pytest.raises(EngineDeadError):
        await engine.call(Engine.load_report)


async def test_shutdown_ends_open_streams_and_refuses_new_ones(engine: AsyncEngine) -> None:
    # A stream left open at shutdown would wait forever, and a request sent after it would
    # queue on a loop that no longer runs: both must fail, and the engine say it is not alive.
    stream = _generate(engine, "Running at shutdown", LONG, "open")
    await anext(stream)
    await asyncio.to_thread(engine.shutdown)
    assert not engine.alive
    with pytest.raises(EngineDeadError, match="shut down"):
        async for _ in stream:
            pass
    with pytest.raises(EngineDeadError):
        await _collect(engine, "After shutdown", LONG, "late")


# The engine process alone.


def _spawn(model: Path, dtype: str = "auto") -> AsyncEngine:
    return AsyncEngine.spawn(EngineConfig(model=model, dtype=dtype), torch_threads=1)


async def test_killed_engine_process_fails_every_stream(demo_model_dir: Path) -> None:
    engine = _spawn(demo_model_dir, dtype="float32")
    try:
        stream = _generate(engine, "killed mid-stream", LONG, "k")
        await anext(stream)
        os.kill(engine.pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError, match="exited with code -9"):
            async for _ in stream:
                pass
        assert not engine.alive
        with pytest.raises(EngineDeadError):
            await engine.call(Engine.load_report)
    finally:
        engine.shutdown()


async def test_ctrl_c_is_for_the_serving_process_not_the_engine(demo_model_dir: Path) -> None:
    # A terminal's Ctrl-C reaches the whole process group; the server drains before it stops
    # the engine, so the engine must not die of the signal first.
    engine = _spawn(demo_model_dir, dtype="float32")
    try:
        stream = _generate(engine, "interrupted?", GREEDY_32, "i")
        first = await anext(stream)
        os.kill(engine.pid, signal.SIGINT)
        rest = [out async for out in stream]
        assert len(tokens_of([first, *rest])) == 32
        assert engine.alive
    finally:
        engine.shutdown()


def test_a_model_that_cannot_load_raises_what_the_engine_raises(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read JSON") as in_process:
        make_engine(tmp_path)
    with pytest.raises(ModelLoadError) as spawned:
        _spawn(tmp_path)
    assert str(spawned.value) == str(in_process.value)


async def test_spawned_engine_resolves_its_config_and_stops_when_shut_down(
    demo_model_dir: Path,
) -> None:
    engine = _spawn(demo_model_dir)
    assert engine.config.dtype in ("float32", "bfloat16")  # "auto" as the engine resolved it
    assert engine.requests.max_model_len == make_engine(demo_model_dir).max_model_len
    engine.shutdown()
    assert not _running(engine.pid)


SERVER = """
import sys, time
from pathlib import Path
from worker.async_engine import AsyncEngine
from worker.config import EngineConfig
engine = AsyncEngine.spawn(EngineConfig(model=Path(sys.argv[1]), dtype="float32"), 1)
print(engine.pid, flush=True)
time.sleep(120)
"""


def test_the_engine_process_exits_when_its_server_is_killed(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    # No orphan holding the model's memory: the engine sees its socket close and exits.
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(demo_model_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert server.stdout is not None
        pid = int(server.stdout.readline())
        assert _running(pid)
    finally:
        server.kill()
        server.wait()
    for _ in range(100):
        if not _running(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the engine process outlived its server by 10 s")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whoever adopted it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
