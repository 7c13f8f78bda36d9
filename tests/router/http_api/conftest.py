"""Both front doors over one real engine on the demo model, on free loopback ports, shared by
the package's tests; HTTP clients are the official openai SDK and raw httpx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from cluster.local_backend import LocalBackend
from router.client import GenerationClient
from router.http_api import ChatTemplate
from tests.router.serving import RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine

MODEL_NAME = "demo-tiny"
MAX_QUEUED = 4


@pytest.fixture(scope="package")
def server(demo_model_dir: Path) -> Iterator[RunningServer]:
    engine = AsyncEngine(make_engine(demo_model_dir))
    backend = LocalBackend(engine, MODEL_NAME, max_queued_requests=MAX_QUEUED)
    template = ChatTemplate.from_model_dir(demo_model_dir)
    running = RunningServer(backend, http=True, chat_template=template)
    yield running
    running.close()


@pytest.fixture(scope="package")
def openai_client(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="package")
def grpc_client(server: RunningServer) -> Iterator[GenerationClient]:
    with GenerationClient(f"127.0.0.1:{server.port}") as client:
        yield client
