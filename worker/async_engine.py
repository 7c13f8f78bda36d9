"""The asyncio face of the engine: stream a request's outputs, abort it, from any coroutine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from worker.config import EngineConfig
from worker.engine import Engine
from worker.engine_loop import Abort, Add, Call, error_output
from worker.engine_process import ProcessRunner
from worker.engine_thread import ThreadRunner
from worker.errors import DuplicateRequestError, EngineDeadError
from worker.messages import GenerationRequest, RequestOutput
from worker.request_builder import RequestBuilder

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Stream:
    """Where one ``generate`` call's outputs go, relabelled with the caller's request id."""

    request_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput]


class AsyncEngine:
    """Routes each of the engine's outputs to its request's stream. A stream that is closed
    early (cancelled, or its consumer stops) aborts its request.

    The step loop runs either on a thread of this process (``AsyncEngine(engine)``: tests, and
    replicas whose ranks are Ray actors) or in an engine process of its own
    (``AsyncEngine.spawn(config)``: ``kvfleet serve`` and single-rank replicas), where the
    serving side's Python work does not hold up the steps. Either way the outputs of one step
    reach each event loop in one hand-off.

    Inside the engine each call runs under an id of its own (the caller's id and a counter), so
    a caller may reuse an id as soon as its stream has closed: the old request's last outputs,
    still on their way, can never reach the new stream."""

    def __init__(self, engine: Engine) -> None:
        """Run ``engine``'s step loop on a thread of this process."""
        self._setup(engine.config, engine.requests)
        self._runner: ThreadRunner | ProcessRunner = ThreadRunner(engine, self, self._died)

    @classmethod
    def spawn(cls, config: EngineConfig, torch_threads: int | None = None) -> AsyncEngine:
        """Build the engine in a process of its own (raising what building it raises) and
        serve it from this one."""
        self = cls.__new__(cls)
        self._setup(config, None)
        runner = ProcessRunner(config, self, self._died, torch_threads)
        self._runner = runner
        try:
            requests = RequestBuilder.for_config(runner.config)
        except BaseException:
            runner.shutdown()  # or the engine process would outlive us, holding its memory
            raise
        # Only these two: the engine may already have reported a death, which must stand.
        self.config = runner.config
        self._requests = requests
        return self

    def _setup(self, config: EngineConfig, requests: RequestBuilder | None) -> None:
        self.config = config  # as the engine resolved it ("auto" dtype and all)
        self._requests = requests
        self._streams: dict[str, _Stream] = {}  # by engine id
        self._engine_ids: dict[str, str] = {}  # caller's request id -> engine id
        self._pending_calls: dict[int, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._dead: BaseException | None = None

    @property
    def requests(self) -> RequestBuilder:
        """Validates and tokenizes requests exactly as the engine would; any thread may use it."""
        assert self._requests is not None
        return self._requests

    @property
    def engine(self) -> Engine:
        """The engine itself, when its loop runs on a thread of this process (tests)."""
        if not isinstance(self._runner, ThreadRunner):
            raise RuntimeError("the engine runs in a process of its own; use call()")
        return self._runner.engine

    @property
    def pid(self) -> int:
        """The engine process's id (spawned engines only)."""
        if not isinstance(self._runner, ProcessRunner):
            raise RuntimeError("the engine runs on a thread of this process")
        return self._runner.pid

    @property
    def alive(self) -> bool:
        """False once the step loop has stopped (on a failure, or shut down); every later
        request is refused."""
        return self._dead is None

    @property
    def num_running(self) -> int:
        """Streams open now: requests queued or running."""
        return len(self._engine_ids)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs until the one marked finished. Raises
        DuplicateRequestError, before anything is queued, while another stream has its id."""
        if self._dead is not None:
            raise EngineDeadError(f"engine stopped: {self._dead!r}")
        request_id = request.request_id
        engine_id = f"{request_id}#{next(self._counter)}"
        stream = _Stream(request_id, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if self._dead is not None:  # under the lock: _died fails exactly what it saw here
                raise EngineDeadError(f"engine stopped: {self._dead!r}")
            if request_id in self._engine_ids:
                raise DuplicateRequestError(request_id)
            self._engine_ids[request_id] = engine_id
            self._streams[engine_id] = stream
        self._runner.submit(Add(dataclasses.replace(request, request_id=engine_id)))
        finished = False
        try:
            while not finished:
                output = await stream.queue.get()
                finished = output.finished
                if output.failure is not None:  # refused by the engine (overloaded, say)
                    raise output.failure
                if output.error is not None:
                    raise EngineDeadError(output.error)
                yield dataclasses.replace(output, request_id=request_id)
        finally:
            if not finished:
                self._runner.submit(Abort(engine_id))
            with self._lock:
                del self._streams[engine_id]
                del self._engine_ids[request_id]

    def abort(self, request_id: str) -> bool:
        """Abort the running request with the caller's id ``request_id``: its stream ends with
        finish_reason "abort". False if no stream has that id."""
        with self._lock:
            engine_id = self._engine_ids.get(request_id)
        if engine_id is None:
            return False
        self._runner.submit(Abort(engine_id))
        return True

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` where the engine runs, between two steps: the safe way to read
        engine state (a load report, KV events, integrity) while requests run. Commands run in
        the order they were given: an abort given before a call has been applied when it runs.
        With an engine process ``fn`` is pickled by reference (a module-level function, or a
        method such as ``Engine.load_report``) and so is what it returns."""
        if self._dead is not None or not self._runner.running():
            raise EngineDeadError(f"engine stopped: {self._dead!r}")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        call_id = next(self._counter)
        with self._lock:
            self._pending_calls[call_id] = future
        self._runner.submit(Call(fn, call_id))
        if self._dead is not None:  # died while we queued: nothing will answer
            self._refuse_calls(f"engine stopped: {self._dead!r}")
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Stop the step loop (and the engine process); every open stream fails."""
        self._runner.shutdown()

    # Sink: what the runner calls, from its thread.

    def outputs(self, outputs: list[RequestOutput]) -> None:
        """One hand-off per event loop per step, however many streams it serves: each
        ``call_soon_threadsafe`` wakes the loop."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, RequestOutput]]] = {}
        with self._lock:
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is not None:
                    batches.setdefault(stream.loop, []).append((stream, output))
        for loop, batch in batches.items():
            _hand_to(loop, _put_all, batch)

    def result(self, call_id: int, value: Any, error: BaseException | None) -> None:
        with self._lock:
            future = self._pending_calls.pop(call_id, None)
        if future is None:
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def _died(self, exc: BaseException) -> None:
        """The step loop stopped: every stream and every call waiting ends with an error."""
        with self._lock:
            if self._dead is None:
                self._dead = exc
            targets = list(self._streams.items())
        # The runners' own reasons ("shut down", "exited with code 9") read as they are.
        message = str(exc) if isinstance(exc, EngineDeadError) else f"engine stopped: {exc!r}"
        for engine_id, stream in targets:
            _hand_to(stream.loop, stream.queue.put_nowait, error_output(engine_id, message))
        self._refuse_calls(message)

    def _refuse_calls(self, message: str) -> None:
        with self._lock:
            pending = list(self._pending_calls.values())
            self._pending_calls.clear()
        for future in pending:
            future.set_exception(EngineDeadError(message))


def _hand_to(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop``; a loop already closed has no one left to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _put_all(batch: list[tuple[_Stream, RequestOutput]]) -> None:
    for stream, output in batch:
        stream.queue.put_nowait(output)
