"""One real gRPC server on a free loopback port, over a real engine on the demo model, shared by
the package's tests; the server runs its own event loop on a thread so tests stay synchronous."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from cluster.local_backend import LocalBackend
from router.client import GenerationClient
from router.grpc_api import serve, stop
from tests.net import free_port
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine
from worker.engine import Engine

MODEL_NAME = "demo-tiny"
MAX_QUEUED = 4

T = TypeVar("T")


class RunningServer:
    """A started server, its backend and the engine behind it, for tests to inspect."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: grpc.aio.Server = self._run(serve(backend, port=self.port))

    @property
    def engine(self) -> Engine:
        return self.backend.engine.engine

    def wait_until_idle(self, timeout_s: float = 3.0) -> None:
        """Every request gone and every KV block back in the pool. The engine is only read once
        its thread has nothing left to do."""
        engine = self.engine
        end = time.monotonic() + timeout_s
        while engine.has_unfinished() or engine.kv.pool.num_free != engine.num_blocks:
            assert time.monotonic() < end, "requests or KV blocks still held"
            time.sleep(0.01)
        engine.check_integrity()

    def close(self) -> None:
        self._run(stop(self.server, grace_s=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.backend.engine.shutdown()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)


@pytest.fixture(scope="package")
def server(demo_model_dir: Path) -> Iterator[RunningServer]:
    engine = AsyncEngine(make_engine(demo_model_dir))
    running = RunningServer(LocalBackend(engine, MODEL_NAME, max_queued_requests=MAX_QUEUED))
    yield running
    running.close()


@pytest.fixture(scope="package")
def client(server: RunningServer) -> Iterator[GenerationClient]:
    with GenerationClient(f"127.0.0.1:{server.port}") as client:
        yield client
