"""The step loop on a thread of the serving process: for tests, and for replicas whose ranks are
Ray actors (their driver must stay in the Ray worker process)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from worker import engine_loop
from worker.engine import Engine
from worker.engine_loop import Command, Shutdown, Sink
from worker.errors import EngineDeadError

_log = logging.getLogger(__name__)


class ThreadRunner:
    """torch releases the GIL in its ops, so the event loop stays responsive while a step runs;
    the Python parts of a step and of the serving path still take turns on one interpreter."""

    def __init__(self, engine: Engine, sink: Sink, died: Callable[[BaseException], None]) -> None:
        self.engine = engine
        self._sink = sink
        self._died = died
        self._queue: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="kvfleet-engine", daemon=True)
        self._thread.start()

    def submit(self, command: Command | None) -> None:
        """Queue a command; None stops the loop."""
        self._queue.put(command)

    def running(self) -> bool:
        return self._thread.is_alive()

    def shutdown(self) -> None:
        self.submit(None)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():  # never under a step still running
            self.engine.shutdown()

    def get(self, timeout_s: float | None) -> Command | None:
        try:
            command = self._queue.get(block=timeout_s != 0, timeout=timeout_s or None)
        except queue.Empty:
            return None
        if command is None:
            raise Shutdown
        return command

    def _run(self) -> None:
        try:
            engine_loop.run(self.engine, self, self._sink)
        except Shutdown:
            self._died(EngineDeadError("the engine was shut down"))
        except BaseException as exc:  # every stream must learn that the engine died
            _log.exception("engine loop stopped; failing every in-flight request")
            self._died(exc)
