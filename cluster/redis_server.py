"""A throwaway redis-server child process on loopback, for tests and ``kvfleet up``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

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
        self,
        port: int | None = None,
        binary: str = "redis-server",
        parent_dir: Path | None = None,
        password: str | None = None,
        tls: RedisTLS | None = None,
    ) -> None:
        self.port = port or _free_port()
        self.binary = binary
        self.parent_dir = parent_dir  # where its directory goes (default: the system's temp)
        self.password = password
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def pid(self) -> int:
        """The server's pid; 0 when it is not running."""
        return self._process.pid if self._process is not None else 0

    @property
    def url(self) -> str:
        """The clients' URL: rediss:// with TLS; never the password."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

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
        args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self._dir)]
        args += ["--port", str(self.port)] if self.tls is None else self.tls.server_args(self.port)
        if self.password is not None:
            args += ["--requirepass", self.password]
        with log.open("wb") as output:  # not our stdout: the server must not hold our pipes open
            self._process = subprocess.Popen(
                [binary, *args], stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(
            port=self.port,
            password=self.password,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            **(self.tls.client_args() if self.tls is not None else {}),
        )
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


@dataclass(frozen=True)
class RedisTLS:
    """The server's certificate and key, and the CA its clients' certificates must chain to
    when ``require_client_certs`` (mutual TLS); the plain port is closed."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    require_client_certs: bool = False
    client_cert_file: Path | None = None  # what start() itself connects with (mutual TLS)
    client_key_file: Path | None = None

    def server_args(self, port: int) -> list[str]:
        return [
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(self.cert_file), "--tls-key-file", str(self.key_file),
            "--tls-ca-cert-file", str(self.ca_file),
            "--tls-auth-clients", "yes" if self.require_client_certs else "no",
        ]  # fmt: skip

    def client_args(self) -> dict[str, Any]:
        return {
            "ssl": True,
            "ssl_ca_certs": str(self.ca_file),
            "ssl_certfile": None if self.client_cert_file is None else str(self.client_cert_file),
            "ssl_keyfile": None if self.client_key_file is None else str(self.client_key_file),
        }


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
