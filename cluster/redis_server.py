"""A throwaway redis-server child process on loopback, for tests and ``kvfleet up``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis


class RedisServerError(RuntimeError):
    """redis-server is missing, or did not come up."""


class RedisServer:
    """``redis-server`` on 127.0.0.1 without persistence: what it holds dies with it, which is
    what the KV-event bus must survive (routers resynchronise from the replicas' snapshots).

    The port is fixed at construction (a free one if none is given), so ``restart`` comes back
    at the same ``url``, empty.
    """

    def __init__(
        self, port: int | None = None, binary: str = "redis-server", parent_dir: Path | None = None
    ) -> None:
        self.port = port or _free_port()
        self.binary = binary
        self.parent_dir = parent_dir  # where its directory goes (default: the system's temp)
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def pid(self) -> int:
        """The server's pid; 0 when it is not running."""
        return self._process.pid if self._process is not None else 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and return once it answers."""
        if self._process is not None:
            raise RedisServerError(f"redis-server on port {self.port} is already running")
        binary = shutil.which(self.binary)
        if binary is None:
            raise RedisServerError(
                f"{self.binary!r} not found on PATH; install it (apt-get install redis-server)"
            )
        self._dir = Path(tempfile.mkdtemp(prefix="kvfleet-redis-", dir=self.parent_dir))
        log = self._dir / "redis.log"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        args += ["no", "--dir", str(self._dir)]
        with log.open("wb") as output:  # not our stdout: the server must not hold our pipes open
            self._process = subprocess.Popen(
                [binary, *args], stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            while _server_pid(client) != self._process.pid:  # not another server's answer
                if self._process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    self.stop()
                    raise RedisServerError(
                        f"redis-server on port {self.port} did not start:\n{tail}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (its data is gone) and remove its directory; idempotent."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def restart(self) -> None:
        """Stop and start again on the same port: clients see a connection loss, then an empty
        server."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _server_pid(client: redis.Redis) -> int | None:
    """The pid of the server answering on the client's port, if any answers."""
    try:
        return int(client.info("server")["process_id"])
    except (redis.ConnectionError, redis.TimeoutError):
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
