"""A bug behind the front door becomes INTERNAL with its cause in the server's log, never a
traceback to the client, and the server goes on serving."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import grpc
import pytest

from cluster.local_backend import LocalBackend
from router.client import GenerationClient
from tests.router.grpc_api.conftest import MODEL_NAME, RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine
from worker.messages import GenerationRequest, RequestOutput


class FaultyBackend(LocalBackend):
    """The real engine, with a bug injected for prompts that ask for it."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        if request.params.max_tokens == 13:
            raise ZeroDivisionError("the injected bug's secret detail")
        async for output in super().generate(request):
            yield output


@pytest.fixture
def faulty(demo_model_dir: Path) -> Iterator[RunningServer]:
    server = RunningServer(FaultyBackend(AsyncEngine(make_engine(demo_model_dir)), MODEL_NAME))
    yield server
    server.close()


def test_an_unexpected_error_is_internal_logged_and_disturbs_nothing(
    faulty: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with GenerationClient(f"127.0.0.1:{faulty.port}") as client:
        with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as err:
            list(client.generate("hi", max_tokens=13))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == "internal error (ZeroDivisionError)"
        assert "secret detail" in caplog.text  # the cause is in the log, not sent
        responses = list(client.generate("still serving", max_tokens=4, ignore_eos=True))
        assert responses[-1].finished.usage.completion_tokens == 4
    faulty.wait_until_idle()
