"""One real gRPC server on a free loopback port, over a real engine on the demo model, shared by
the package's tests (tests/router/serving.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.local_backend import LocalBackend
from router.client import GenerationClient
from tests.router.serving import RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine

MODEL_NAME = "demo-tiny"
MAX_QUEUED = 4


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
