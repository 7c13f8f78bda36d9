"""The front door's event loop only moves bytes: tokenizing a huge prompt happens on a thread,
so other streams and the health check go on while it is read and refused."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.local_backend import LocalBackend
from router.client import GenerationClient
from tests.router.grpc_api.conftest import MODEL_NAME
from tests.router.serving import RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine

HUGE = ("The scheduler gives each running request one token per step. " * 70_000)[:3_900_000]


@pytest.fixture
def lenient_server(demo_model_dir: Path) -> Iterator[RunningServer]:
    """No character limit: the huge prompt is tokenized whole, then refused for its tokens."""
    engine = AsyncEngine(make_engine(demo_model_dir, max_prompt_chars=10**8))
    server = RunningServer(LocalBackend(engine, MODEL_NAME))
    yield server
    server.close()


def test_other_streams_flow_while_a_huge_prompt_is_tokenized_and_refused(
    lenient_server: RunningServer,
) -> None:
    target = f"127.0.0.1:{lenient_server.port}"
    refusal: list[grpc.RpcError] = []
    window: list[float] = []

    def send_huge() -> None:
        with GenerationClient(target) as client:
            window.append(time.monotonic())
            try:
                list(client.generate(HUGE, max_tokens=4))
            except grpc.RpcError as err:
                refusal.append(err)
            window.append(time.monotonic())

    with GenerationClient(target) as client:
        stream = iter(client.generate("Keep talking", max_tokens=1800, ignore_eos=True))
        next(stream)
        huge = threading.Thread(target=send_huge)
        huge.start()
        arrivals, health_waits = [], []
        health = health_pb2_grpc.HealthStub(client.channel)
        for _ in stream:
            arrivals.append(time.monotonic())
            if huge.is_alive() and len(arrivals) % 50 == 0:
                asked = time.monotonic()
                health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                health_waits.append(time.monotonic() - asked)
            if not huge.is_alive() and len(window) == 2 and arrivals[-1] > window[1]:
                break
        huge.join()
    (err,) = refusal
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("prompt: ") and "tokens leave no room" in err.details()
    start, end = window
    during = [b - a for a, b in itertools.pairwise(arrivals) if start <= a <= end]
    assert len(during) > 10, "the other stream must overlap the huge prompt's tokenizing"
    # Inline on the loop, tokenizing stalls every stream for the whole refusal (seconds):
    # off the loop, no gap comes near it.
    assert max(during) < (end - start) / 4
    assert health_waits and max(health_waits) < (end - start) / 4
    lenient_server.wait_until_idle()
