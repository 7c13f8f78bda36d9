"""Both front doors start and stop together: an HTTP port that cannot be bound is a clear error,
and the gRPC server already started is stopped again (its port free for the next try)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from cluster.local_backend import LocalBackend
from router.front_doors import open_front_doors
from tests.net import free_port
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine


def test_a_busy_http_port_raises_and_leaves_no_grpc_server_behind(demo_model_dir: Path) -> None:
    engine = AsyncEngine(make_engine(demo_model_dir))
    backend = LocalBackend(engine, "demo-tiny")
    grpc_port = free_port()

    async def run() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            http_port = busy.getsockname()[1]
            with pytest.raises(OSError, match=f"cannot serve HTTP on 127.0.0.1:{http_port}"):
                await open_front_doors(backend, grpc_port=grpc_port, http_port=http_port)
        with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
            socket.create_connection(("127.0.0.1", grpc_port), timeout=5).close()
        doors = await open_front_doors(backend, grpc_port=grpc_port, http_port=0)
        assert doors.describe().startswith(f"gRPC on 127.0.0.1:{grpc_port}, HTTP on")
        await doors.stop(grace_s=0)

    try:
        asyncio.run(run())
    finally:
        engine.shutdown()
