"""Generated Generate calls, every field over its whole wire range (NaN and infinite floats,
huge counts, odd Unicode, long lists) and raw bytes that are not a message at all: each call is
served or refused with a client status and a message, never INTERNAL or UNKNOWN; the server
serves normally afterwards."""

from __future__ import annotations

from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerationClient
from tests.router.grpc_api.conftest import RunningServer

CLIENT_STATUSES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a valid request that runs past the test's deadline
}
FLOATS = st.floats(width=32)  # NaN and infinities included
UINT32 = st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1))
TEXT = st.text(max_size=40)
SAMPLING_FIELDS: dict[str, st.SearchStrategy[Any]] = {
        "temperature": FLOATS,
        "top_p": FLOATS,
        "top_k": st.integers(-(2**31), 2**31 - 1),
        "min_p": FLOATS,
        "seed": st.integers(0, 2**64 - 1),
        "max_tokens": UINT32,
        "stop": st.lists(TEXT, max_size=30),
        "stop_token_ids": st.lists(UINT32, max_size=80),
        "ignore_eos": st.booleans(),
        "logprobs": UINT32,
        "n": st.integers(0, 40),
        "beam_width": st.integers(0, 40),
        "length_penalty": FLOATS,
        "early_stopping": st.booleans(),
}  # fmt: skip
SAMPLING = st.fixed_dictionaries({}, optional=SAMPLING_FIELDS)
REQUESTS = st.fixed_dictionaries(
    {"sampling": SAMPLING},
    optional={
        "text": st.text(max_size=200),
        "token_ids": st.lists(UINT32, max_size=60),
        "model": TEXT,
        "cache_salt": st.text(max_size=300),
        "request_id": st.text(max_size=300),
        "priority": st.integers(-(2**31), 2**31 - 1),
    },
)


def _message(fields: dict[str, Any]) -> pb.GenerateRequest:
    request = pb.GenerateRequest(sampling=pb.SamplingParameters(**fields["sampling"]))
    if "token_ids" in fields:
        request.token_ids.ids.extend(fields["token_ids"])
    elif "text" in fields:
        request.text = fields["text"]
    for name in ("model", "cache_salt", "request_id", "priority"):
        if name in fields:
            setattr(request, name, fields[name])
    return request


def _call(server: RunningServer, payload: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        generate = channel.unary_stream(
            "/kvfleet.v1.Generation/Generate",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.GenerateResponse.FromString,
        )
        try:
            for _ in generate(payload, timeout=10):
                pass
        except grpc.RpcError as err:
            assert err.details(), err.code()  # a message says what was wrong
            return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=REQUESTS)
def test_generated_requests_are_served_or_refused_cleanly(
    server: RunningServer, fields: dict[str, Any]
) -> None:
    assert _call(server, _message(fields).SerializeToString()) in CLIENT_STATUSES


@st.composite
def _one_field_off(draw: st.DrawFn) -> dict[str, Any]:
    """A short valid request with one sampling field set to any value of its wire type."""
    name = draw(st.sampled_from(sorted(SAMPLING_FIELDS)))
    sampling = {"max_tokens": 3, "temperature": 0.0, name: draw(SAMPLING_FIELDS[name])}
    if name == "max_tokens":
        sampling[name] = min(sampling[name], 3000)  # past the context, not past the test
    return {"text": "one field at a time", "sampling": sampling}


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=_one_field_off())
def test_each_field_over_its_whole_range_is_served_or_refused_cleanly(
    server: RunningServer, fields: dict[str, Any]
) -> None:
    assert _call(server, _message(fields).SerializeToString()) in CLIENT_STATUSES


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(max_size=200))
def test_bytes_that_are_not_a_message_are_refused_cleanly(
    server: RunningServer, payload: bytes
) -> None:
    assert _call(server, payload) in CLIENT_STATUSES


def test_the_server_still_serves_after_the_fuzzing(
    client: GenerationClient, server: RunningServer
) -> None:
    server.wait_until_idle()
    assert list(client.generate("still here", max_tokens=3))[-1].HasField("finished")
