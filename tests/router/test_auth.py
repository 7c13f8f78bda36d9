"""Bearer tokens on both front doors: refused without an accepted one, served with it; health
stays open to probes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.cli import main
from cluster.local_backend import LocalBackend
from router.auth import TokenAuth
from router.client import GenerationClient
from tests.router.serving import RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(demo_model_dir: Path) -> Iterator[RunningServer]:
    engine = AsyncEngine(make_engine(demo_model_dir))
    backend = LocalBackend(engine, "demo-tiny", 8)
    running = RunningServer(backend, http=True, auth=TokenAuth(["another", TOKEN]))
    yield running
    running.close()


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_grpc_calls_without_an_accepted_token_are_unauthenticated(
    server: RunningServer, token: str | None
) -> None:
    with GenerationClient(f"127.0.0.1:{server.port}", token=token) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.list_models()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list(client.generate("Hello", max_tokens=2))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_calls_with_a_token_are_served_and_health_needs_none(server: RunningServer) -> None:
    with GenerationClient(f"127.0.0.1:{server.port}", token=TOKEN) as client:
        responses = list(client.generate("Hello", max_tokens=2, ignore_eos=True))
        assert responses[-1].finished.usage.completion_tokens == 2
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    server.wait_until_idle()


def test_http_needs_the_token_but_for_health(server: RunningServer) -> None:
    base = f"{server.base_url}/v1"
    with (
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()
    with openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["demo-tiny"]
    assert httpx2.get(f"{server.base_url}/health").status_code == 200
    metrics = httpx2.get(f"{server.base_url}/metrics")
    assert metrics.status_code == 401 and metrics.headers["www-authenticate"] == "Bearer"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx2.get(f"{server.base_url}/metrics", headers=headers).status_code == 200


def test_a_token_file_takes_one_token_per_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# the platform team's\nfirst\n\n  second  \n")
    auth = TokenAuth.from_file(path)
    assert auth.allows("Bearer first") and auth.allows("bearer second")
    assert not auth.allows("Bearer third") and not auth.allows("first") and not auth.allows(None)
    path.write_text("# nothing but comments\n")
    with pytest.raises(ValueError, match="no token in it"):
        TokenAuth.from_file(path)
    with pytest.raises(ValueError, match=r"auth tokens file \S+: No such file"):
        TokenAuth.from_file(tmp_path / "missing")


def test_the_cli_sends_its_token(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "--target", f"127.0.0.1:{server.port}", "--max-tokens", "2", "Hi"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    assert "kvfleet generate: UNAUTHENTICATED" in capsys.readouterr().err
    assert main([*args[:-1], "--token", TOKEN, "Hi"]) == 0
    server.wait_until_idle()
