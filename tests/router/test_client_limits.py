"""Per-client limits and priorities, each client known by its bearer token: requests in flight
and arrivals per second over the limit are refused at once (RESOURCE_EXHAUSTED, HTTP 429), and
a client may ask to be less important than its default but never more."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest

from cluster.local_backend import LocalBackend
from router.auth import Client, TokenAuth
from router.client import GenerationClient
from router.client_limits import ClientLimits
from tests.router.serving import RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine
from worker.errors import OverloadedError

CLIENTS = {
    "one-at-a-time": Client("narrow", max_concurrency=1),
    "slow-arrivals": Client("metered", requests_per_s=0.2),
    "batch-jobs": Client("batch", priority=5),
}


@pytest.fixture(scope="module")
def server(demo_model_dir: Path) -> Iterator[RunningServer]:
    engine = AsyncEngine(make_engine(demo_model_dir))
    running = RunningServer(
        LocalBackend(engine, "demo-tiny", 64), http=True, auth=TokenAuth(CLIENTS)
    )
    yield running
    running.close()


def _client(server: RunningServer, token: str) -> GenerationClient:
    return GenerationClient(f"127.0.0.1:{server.port}", token=token)


def test_a_client_over_its_concurrency_is_refused_and_others_are_not(
    server: RunningServer,
) -> None:
    with _client(server, "one-at-a-time") as narrow, _client(server, "batch-jobs") as other:
        long = narrow.generate("A long answer", max_tokens=1500, temperature=0.0, ignore_eos=True)
        next(iter(long))  # running now
        with pytest.raises(grpc.RpcError) as refused:
            list(narrow.generate("A second one", max_tokens=2))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'narrow' has 1 requests in flight, at most 1" in (refused.value.details() or "")
        with (
            openai.OpenAI(
                base_url=f"{server.base_url}/v1", api_key="one-at-a-time", max_retries=0
            ) as http,
            pytest.raises(openai.RateLimitError),
        ):
            http.completions.create(model="demo-tiny", prompt="over HTTP too", max_tokens=2)
        assert list(other.generate("Someone else", max_tokens=2))[-1].HasField("finished")
        long.cancel()
    server.wait_until_idle()
    with _client(server, "one-at-a-time") as narrow:  # its slot came back
        assert list(narrow.generate("Again", max_tokens=2))[-1].HasField("finished")


def test_a_client_over_its_arrival_rate_is_refused(server: RunningServer) -> None:
    with _client(server, "slow-arrivals") as metered:
        assert list(metered.generate("First", max_tokens=2))[-1].HasField("finished")
        with pytest.raises(grpc.RpcError) as refused:
            list(metered.generate("Too soon", max_tokens=2))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "0.2 requests per second" in (refused.value.details() or "")
    server.wait_until_idle()


def test_a_client_may_lower_its_priority_but_not_raise_it(server: RunningServer) -> None:
    with _client(server, "batch-jobs") as batch:
        assert list(batch.generate("Less urgent", max_tokens=2, priority=9))[-1].HasField(
            "finished"
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(batch.generate("Urgent!", max_tokens=2, priority=0))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith("priority: 0 is more important")
    server.wait_until_idle()


def test_the_token_bucket_refills_at_the_clients_rate() -> None:
    now = [0.0]
    limits = ClientLimits(clock=lambda: now[0])
    client = Client("c", requests_per_s=2.0)  # bursts of two
    for _ in range(2):
        limits.acquire(client)
        limits.release(client)
    with pytest.raises(OverloadedError, match=r"retry in 0\.50 s"):
        limits.acquire(client)
    now[0] = 0.5
    limits.acquire(client)
    assert limits.in_flight(client) == 1


def test_a_token_file_carries_each_clients_settings(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("t1 name=web priority=-1 max_concurrency=4 requests_per_s=2.5\nt2\n")
    auth = TokenAuth.from_file(path)
    assert auth.client_for("Bearer t1") == Client("web", -1, 4, 2.5)
    assert auth.client_for("Bearer t2") == Client("token-2")
    for bad, message in [
        ("t speed=3", "line 1: 'speed=3' is not one of"),
        ("t max_concurrency=0", "max_concurrency must be at least 1"),
        ("t requests_per_s=inf", "requests_per_s must be a number > 0"),
        ("t priority=high", "a setting is not a number"),
        ("t priority=5000", "priority must be in [-1000, 1000]"),
    ]:
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            TokenAuth.from_file(path)
