"""Every error status of the HTTP front door, in OpenAI's error shape, over raw HTTP (httpx2, the
HTTP client the openai SDK itself uses); and a client that disconnects mid-stream aborts its
request and frees its KV blocks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import pytest

from cluster.local_backend import LocalBackend
from router.http_api import HTTPConfig
from tests.router.http_api.conftest import MAX_QUEUED, MODEL_NAME
from tests.router.serving import RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine

LONG = {"prompt": "Keep going", "max_tokens": 1500, "temperature": 0.0, "ignore_eos": True}


def _post(server: RunningServer, path: str, body: Any, **kwargs: Any) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx2.post(f"{server.base_url}{path}", content=content, timeout=30, **kwargs)


def _stream(server: RunningServer, body: dict[str, Any], **kwargs: Any) -> Any:
    url = f"{server.base_url}/v1/completions"
    return httpx2.stream("POST", url, json={**body, "stream": True}, timeout=30, **kwargs)


def _error(response: httpx2.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a", "temperature": -1}, "temperature"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": [999999]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "a", "n": 0}, "n"),
        ({"prompt": "a", "logprobs": 99}, "logprobs"),
        ({"prompt": "a", "stop": [""]}, "stop"),
        ({"prompt": "a", "suffix": "tail"}, "suffix"),
        ({"prompt": "a", "echo": True}, "echo"),
        ({"prompt": "a", "best_of": 3}, "best_of"),
        ({"prompt": "a", "presence_penalty": 0.5}, "presence_penalty"),
        ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "a", "functions": []}, "functions"),
        ({"prompt": "a", "cache_salt": "s" * 300}, "cache_salt"),
        ({}, "prompt"),
    ],
)
def test_a_bad_completion_field_is_a_400_naming_it(
    server: RunningServer, body: dict[str, Any], param: str
) -> None:
    error = _error(_post(server, "/v1/completions", body), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert param in error["message"]


USER = [{"role": "user", "content": "a"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "a"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0]"),
        ({"messages": USER, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": USER, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": USER, "max_tokens": 2, "max_completion_tokens": 2}, "max_completion"),
    ],
)
def test_a_bad_chat_field_is_a_400_naming_it(
    server: RunningServer, body: dict[str, Any], param: str
) -> None:
    error = _error(_post(server, "/v1/chat/completions", body), 400)
    assert error["param"].startswith(param)


def test_malformed_json_and_non_objects_are_400s(server: RunningServer) -> None:
    assert "JSON" in _error(_post(server, "/v1/completions", b'{"prompt": '), 400)["message"]
    assert "object" in _error(_post(server, "/v1/completions", [1, 2]), 400)["message"]


def test_an_unknown_model_is_a_404(server: RunningServer) -> None:
    error = _error(_post(server, "/v1/completions", {"model": "gpt-9", "prompt": "a"}), 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert MODEL_NAME in error["message"]


def test_the_request_id_header_is_honoured_echoed_and_unique_while_running(
    server: RunningServer,
) -> None:
    headers = {"X-Request-Id": "client-id-1"}
    with _stream(server, LONG, headers=headers) as running:
        assert running.headers["X-Request-Id"] == "client-id-1"
        error = _error(_post(server, "/v1/completions", LONG, headers=headers), 409)
        assert error["code"] == "duplicate_request_id"
    server.wait_until_idle()
    done = _post(server, "/v1/completions", {"prompt": "a", "max_tokens": 2}, headers=headers)
    assert done.status_code == 200 and done.json()["id"] == "cmpl-client-id-1"
    assert done.headers["X-Request-Id"] == "client-id-1"


def test_full_queues_are_a_429_and_disconnecting_streams_free_their_blocks(
    server: RunningServer,
) -> None:
    engine, readers = server.engine, []
    with ExitStack() as streams:
        for _ in range(MAX_QUEUED):
            response = streams.enter_context(_stream(server, LONG))
            assert response.status_code == 200
            # Kept: a dropped line iterator closes its connection, a disconnect.
            readers.append(response.iter_lines())
            next(readers[-1])  # the first token arrived: the request is running
        assert engine.kv.pool.num_free < engine.num_blocks
        _error(_post(server, "/v1/completions", LONG), 429)
    # Every client went away mid-stream: each request is aborted and its blocks come back.
    server.wait_until_idle(timeout_s=10)


@pytest.fixture
def impatient_server(demo_model_dir: Path) -> Iterator[RunningServer]:
    server = RunningServer(
        LocalBackend(AsyncEngine(make_engine(demo_model_dir)), MODEL_NAME),
        http=True,
        http_config=HTTPConfig(request_timeout_s=0.5, max_body_bytes=1000),
    )
    yield server
    server.close()


def test_the_request_timeout_is_a_504_or_a_last_error_event(
    impatient_server: RunningServer,
) -> None:
    server = impatient_server
    _error(_post(server, "/v1/completions", LONG), 504)
    server.wait_until_idle()
    with _stream(server, LONG) as response:  # the status went out with the first token
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["type"] == "timeout_error"
    server.wait_until_idle()


def test_a_body_over_the_limit_is_a_413(impatient_server: RunningServer) -> None:
    _error(_post(impatient_server, "/v1/completions", {"prompt": "a" * 2000}), 413)


@pytest.fixture
def stopped_engine_server(demo_model_dir: Path) -> Iterator[RunningServer]:
    engine = AsyncEngine(make_engine(demo_model_dir))
    server = RunningServer(LocalBackend(engine, MODEL_NAME), http=True)
    engine.shutdown()
    yield server
    server.close()


def test_no_ready_replica_is_a_503_and_health_says_so(
    stopped_engine_server: RunningServer, server: RunningServer
) -> None:
    _error(_post(stopped_engine_server, "/v1/completions", {"prompt": "a"}), 503)
    assert httpx2.get(f"{stopped_engine_server.base_url}/health").status_code == 503
    assert httpx2.get(f"{server.base_url}/health").status_code == 200


def test_chat_without_a_template_is_a_400(stopped_engine_server: RunningServer) -> None:
    error = _error(_post(stopped_engine_server, "/v1/chat/completions", {"messages": USER}), 400)
    assert error["param"] == "messages" and "chat template" in error["message"]
