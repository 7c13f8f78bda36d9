"""The asyncio face of the engine: stream a request's outputs, abort it, from any coroutine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from worker.engine import Engine
from worker.errors import DuplicateRequestError, EngineDeadError, KVFleetError
from worker.messages import GenerationRequest, RequestOutput

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Add:
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class _Abort:
    engine_id: str


@dataclass(frozen=True, slots=True)
class _Call:
    fn: Callable[[Engine], Any]
    future: concurrent.futures.Future[Any]


_Command = _Add | _Abort | _Call


@dataclass(frozen=True, slots=True)
class _Stream:
    """Where one ``generate`` call's outputs go, relabelled with the caller's request id."""

    request_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput]


class AsyncEngine:
    """Runs the engine's step loop on a thread of its own (torch releases the GIL in its ops, so
    the event loop stays responsive) and routes each output to its request's stream. A stream
    that is closed early (cancelled, or its consumer stops) aborts its request.

    Inside the engine each call runs under an id of its own (the caller's id and a counter), so
    a caller may reuse an id as soon as its stream has closed: the old request's last outputs,
    still on their way, can never reach the new stream."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[_Command | None] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # by engine id
        self._engine_ids: dict[str, str] = {}  # caller's request id -> engine id
        self._lock = threading.Lock()
        self._calls = itertools.count()
        self._dead: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kvfleet-engine", daemon=True)
        self._thread.start()

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
        engine_id = f"{request_id}#{next(self._calls)}"
        stream = _Stream(request_id, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if request_id in self._engine_ids:
                raise DuplicateRequestError(request_id)
            self._engine_ids[request_id] = engine_id
            self._streams[engine_id] = stream
        self._commands.put(_Add(dataclasses.replace(request, request_id=engine_id)))
        finished = False
        try:
            while not finished:
                output = await stream.queue.get()
                finished = output.finished
                if output.error is not None:
                    raise EngineDeadError(output.error)
                yield dataclasses.replace(output, request_id=request_id)
        finally:
            if not finished:
                self._commands.put(_Abort(engine_id))
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
        self._commands.put(_Abort(engine_id))
        return True

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` on the engine's thread between two steps: the safe way to read
        engine state (a load report, KV events, integrity) while requests run. Commands run in
        the order they were given: an abort given before a call has been applied when it runs."""
        if self._dead is not None or not self._thread.is_alive():
            raise EngineDeadError(f"engine stopped: {self._dead!r}")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._commands.put(_Call(fn, future))
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._commands.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            while True:
                block = not self.engine.has_unfinished()
                while True:
                    try:
                        command = self._commands.get(block=block)
                    except queue.Empty:
                        break
                    if command is None:
                        self._dead = EngineDeadError("the engine was shut down")
                        self._fail_all("engine shut down")
                        self._refuse_calls("engine shut down")
                        return
                    self._apply(command)
                    block = False
                if self.engine.has_unfinished():
                    self._deliver(self.engine.step())
        except BaseException as exc:  # every stream must learn that the engine died
            self._dead = exc
            _log.exception("engine loop stopped; failing every in-flight request")
            self._fail_all(f"engine stopped: {exc!r}")
            self._refuse_calls(f"engine stopped: {exc!r}")

    def _apply(self, command: _Command) -> None:
        if isinstance(command, _Call):
            try:
                command.future.set_result(command.fn(self.engine))
            except Exception as exc:  # the caller's to handle, not the step loop's
                command.future.set_exception(exc)
        elif isinstance(command, _Add):
            try:
                self.engine.add_request(command.request)
            except KVFleetError as exc:
                self._deliver([_error_output(command.request.request_id, str(exc))])
        else:
            final = self.engine.abort(command.engine_id)
            if final is not None:
                self._deliver([final])

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        with self._lock:
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is not None:
                    stream.loop.call_soon_threadsafe(stream.queue.put_nowait, output)

    def _fail_all(self, message: str) -> None:
        with self._lock:
            targets = list(self._streams.items())
        for engine_id, stream in targets:
            error = _error_output(engine_id, message)
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, error)

    def _refuse_calls(self, message: str) -> None:
        """Fail the calls still queued: nothing will run them once the loop has stopped."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Call):
                command.future.set_exception(EngineDeadError(message))


def _error_output(request_id: str, message: str) -> RequestOutput:
    return RequestOutput(
        request_id, [], "", None, finished=True, finish_reason="error", error=message
    )
