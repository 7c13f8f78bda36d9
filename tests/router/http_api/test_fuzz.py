"""Malformed bodies and out-of-range fields, generated: always a 4xx with a message in OpenAI's
shape, never a 500, never a crash; the server serves normally afterwards."""

from __future__ import annotations

import json
from typing import Any

import httpx2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.router.serving import RunningServer

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),  # what JSON encoders send
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "min_p", "seed", "stop", "n", "stream", "stream_options", "logprobs",
    "top_logprobs", "ignore_eos", "cache_salt", "user", "echo", "response_format",
]  # fmt: skip
BODIES = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6)
RAW = st.one_of(
    st.sampled_from(
        [b'{"prompt": "a", "temperature": NaN}', b'{"prompt": "a", "top_p": -Infinity}']
    ),
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    VALUES.map(lambda v: json.dumps(v).encode()),
)


def _check(response: httpx2.Response) -> None:
    if response.status_code == 200:
        return  # a body that happened to be valid
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    error: dict[str, Any] = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), body=BODIES)
def test_generated_fields_are_refused_cleanly(
    server: RunningServer, path: str, body: dict[str, Any]
) -> None:
    if body.get("stream") is True or body.get("n") not in (None, 1):
        body["stream"], body["n"] = False, 1  # keep each valid example to one short request
    body.setdefault("max_tokens", 2)
    response = httpx2.post(f"{server.base_url}{path}", json=body, timeout=30)
    _check(response)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), raw=RAW)
def test_malformed_bodies_are_refused_cleanly(server: RunningServer, path: str, raw: bytes) -> None:
    response = httpx2.post(f"{server.base_url}{path}", content=raw, timeout=30)
    _check(response)


def test_the_server_still_serves_after_the_fuzzing(server: RunningServer) -> None:
    body = {"prompt": "still here", "max_tokens": 4}
    assert httpx2.post(f"{server.base_url}/v1/completions", json=body).status_code == 200
    server.wait_until_idle()
