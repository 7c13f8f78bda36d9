"""The engine core in a process of its own, so that the serving side (front doors, streaming,
message building) and the step loop no longer share one interpreter lock.

    serving process                                   engine process
    AsyncEngine --Add/Abort/Call (one socket)------->  engine_loop.run(Engine)
      reader thread <--one message per step: every output of it, or a Call's result--

The channel is a socketpair wrapped in multiprocessing's Connection (pickled messages). The
child is ``python -m worker.engine_process FD``, not a multiprocessing child, so that nothing
of the parent's main module (a Ray worker's, say) is re-imported. Calls pickle their function
by reference: module-level functions and methods such as ``Engine.load_report`` only. If the
serving process dies, the child sees the socket close and exits; if the child dies, the
reader sees it close and every stream fails with EngineDeadError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch

from worker import engine_loop
from worker.config import EngineConfig
from worker.engine import Engine
from worker.engine_loop import Command, Shutdown, Sink
from worker.errors import EngineDeadError, ModelLoadError

_log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 30.0


class ProcessRunner:
    """Starts the engine process and waits until its engine is built (raising what building it
    raised); then relays commands to it and its messages to ``sink``."""

    def __init__(
        self,
        config: EngineConfig,
        sink: Sink,
        died: Callable[[BaseException], None],
        torch_threads: int | None = None,
    ) -> None:
        self._sink = sink
        self._died = died
        self._stopping = False
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "worker.engine_process", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=env,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((config, torch_threads))
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            code = self._process.wait()
            message = f"the engine process exited with code {code} while starting"
            raise ModelLoadError(message) from None
        if kind == "failed":
            self._process.wait()
            raise payload
        self.config: EngineConfig = payload
        # Commands go out through a queue and a thread of their own: a send blocks while the
        # socket is full (the engine reads between steps), and the caller is an event loop.
        self._outbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send, name="kvfleet-engine-tx", daemon=True)
        self._reader = threading.Thread(target=self._read, name="kvfleet-engine-rx", daemon=True)
        self._sender.start()
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def submit(self, command: Command | None) -> None:
        """Queue a command; None stops the loop. Never blocks."""
        self._outbox.put(command)

    def running(self) -> bool:
        return self._reader.is_alive()

    def shutdown(self) -> None:
        self._stopping = True
        self.submit(None)
        try:
            self._process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=SHUTDOWN_TIMEOUT_S)

    def _send(self) -> None:
        while True:
            command = self._outbox.get()
            try:
                self._conn.send(command)
            except OSError:
                return  # the engine is gone: the reader reports it, and fails every stream
            if command is None:
                return

    def _read(self) -> None:
        try:
            while True:
                kind, *payload = self._conn.recv()
                if kind == "outputs":
                    self._sink.outputs(payload[0])
                elif kind == "result":
                    self._sink.result(*payload)
                else:  # "dead": the step loop raised
                    self._died(EngineDeadError(payload[0]))
                    return
        except (EOFError, OSError):
            if self._stopping:
                self._died(EngineDeadError("the engine was shut down"))
            else:
                code = self._process.wait()
                _log.error("the engine process exited with code %s", code)
                self._died(EngineDeadError(f"the engine process exited with code {code}"))
        except BaseException as exc:  # a message that cannot be read: no stream can be trusted
            _log.exception("lost the engine process's messages; stopping it")
            self._process.kill()
            self._died(EngineDeadError(f"lost the engine process's messages: {exc!r}"))
        finally:
            self._conn.close()


class _Channel:
    """The child's end: a command source and an output sink over the connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, timeout_s: float | None) -> Command | None:
        try:
            if timeout_s is not None and not self.conn.poll(timeout_s):
                return None
            command = self.conn.recv()
        except EOFError:  # the serving process is gone
            raise Shutdown from None
        if command is None:
            raise Shutdown
        assert isinstance(command, engine_loop.Add | engine_loop.Abort | engine_loop.Call)
        return command

    def outputs(self, outputs: list[Any]) -> None:
        self.conn.send(("outputs", outputs))

    def result(self, call_id: int, value: Any, error: BaseException | None) -> None:
        what = value if error is None else error
        _send_checked(
            self.conn,
            ("result", call_id, value, error),
            lambda exc: ("result", call_id, None, RuntimeError(
                f"the call's result could not be sent back: {what!r} ({exc!r})"
            )),
        )  # fmt: skip


def _send_checked(
    conn: Connection, message: tuple[Any, ...], instead: Callable[[Exception], tuple[Any, ...]]
) -> None:
    """Send ``message`` once it is known to unpickle on the other side (an exception class
    whose __init__ needs arguments does not); else ``instead(why)``, which must."""
    try:
        data = pickle.dumps(message)
        pickle.loads(data)
    except Exception as exc:
        data = pickle.dumps(instead(exc))
    conn.send_bytes(data)


def main() -> int:
    """The engine process: build the engine the parent asked for, then run its loop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Ctrl-C in a terminal reaches the whole process group: the serving process decides when
    # the engine stops (it drains first), and tells it through the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    config, torch_threads = conn.recv()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        engine = Engine(config)
    except Exception as exc:
        unreadable = ("failed", ModelLoadError(repr(exc)))
        _send_checked(conn, ("failed", exc), lambda _: unreadable)
        return 1
    conn.send(("ready", engine.config))
    channel = _Channel(conn)
    try:
        engine_loop.run(engine, channel, channel)
    except Shutdown:
        return 0
    except BaseException as exc:
        _log.exception("engine loop stopped")
        with contextlib.suppress(OSError):  # the serving process may be gone too
            conn.send(("dead", f"engine stopped: {exc!r}"))
        return 1
    finally:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
