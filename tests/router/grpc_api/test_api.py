"""Bad input, Tokenize, ListModels, health and reflection over real gRPC."""

from __future__ import annotations

import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerationClient, Sampling
from router.grpc_api.status import FIELD_TRAILER
from tests.router.grpc_api.conftest import MODEL_NAME
from tests.router.serving import RunningServer

GOOD: Sampling = {"max_tokens": 32, "temperature": 0.0, "ignore_eos": True}


def _bad_cases(vocab_size: int) -> list[tuple[str, str | list[int], Sampling, str]]:
    return [
        ("empty prompt", "", GOOD, "prompt"),
        ("negative temperature", "hi", {**GOOD, "temperature": -1.0}, "sampling.temperature"),
        ("infinite temperature", "hi", {**GOOD, "temperature": math.inf}, "sampling.temperature"),
        ("zero top_p", "hi", {**GOOD, "top_p": 0.0}, "sampling.top_p"),
        ("token id out of vocab", [1, vocab_size], GOOD, "token_ids"),
        ("too many stop strings", "hi", {**GOOD, "stop": ["x"] * 17}, "sampling.stop"),
        ("max_tokens past context", "hi", {**GOOD, "max_tokens": 10**6}, "sampling.max_tokens"),
        ("prompt over the size limit", "word " * 10_000, GOOD, "prompt"),
    ]


def test_every_bad_input_gets_invalid_argument_naming_its_field(
    client: GenerationClient, server: RunningServer
) -> None:
    good = iter(client.generate("Unaffected by its neighbours", **GOOD))
    first = next(good)
    for name, prompt, sampling, field in _bad_cases(server.engine.model_config.vocab_size):
        with pytest.raises(grpc.RpcError) as err:
            list(client.generate(prompt, **sampling))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert err.value.details().startswith(f"{field}: "), (name, err.value.details())
        assert (FIELD_TRAILER, field) in err.value.trailing_metadata(), name
    rest = list(good)
    assert len(first.token_ids) + sum(len(r.token_ids) for r in rest) == 32
    assert rest[-1].finished.reason == pb.FINISH_REASON_LENGTH
    server.wait_until_idle()


@pytest.mark.parametrize(
    ("options", "field"),
    [({"request_id": "r" * 257}, "request_id"), ({"cache_salt": "s" * 257}, "cache_salt")],
)
def test_oversized_ids_are_invalid_argument(
    client: GenerationClient, options: dict[str, str], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(client.generate("hi", **options, **GOOD))  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"{field}: 257 characters, at most 256"


def test_unknown_model_is_invalid_argument(client: GenerationClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(client.generate("hi", model="no-such-model", **GOOD))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("model: ")


def test_duplicate_running_request_id_is_already_exists(
    client: GenerationClient, server: RunningServer
) -> None:
    first = client.generate("First", request_id="dup", max_tokens=1500, ignore_eos=True)
    next(iter(first))
    with pytest.raises(grpc.RpcError) as err:
        list(client.generate("Second", request_id="dup", **GOOD))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    first.cancel()
    server.wait_until_idle()


def test_tokenize_matches_the_engines_tokenizer(
    client: GenerationClient, server: RunningServer
) -> None:
    text = "Tokenize this, please."
    assert client.tokenize(text) == server.engine.tokenizer.encode(text)


def test_list_models_reports_the_served_model(
    client: GenerationClient, server: RunningServer
) -> None:
    [model] = client.list_models()
    assert model.name == MODEL_NAME
    assert model.max_model_len == server.engine.max_model_len
    assert model.vocab_size == server.engine.model_config.vocab_size


def test_health_reports_serving(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "kvfleet.v1.Generation"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [response] = list(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in response.list_services_response.service}
    assert {"kvfleet.v1.Generation", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        (  # invalid UTF-8 in the prompt text
            "Generate",
            pb.GenerateRequest(text="ABCD", sampling=pb.SamplingParameters(max_tokens=2))
            .SerializeToString()
            .replace(b"ABCD", b"AB\xff\xfe"),
        ),
        ("Generate", b"\xff\xff\xff\xff"),  # not a message at all
        ("Tokenize", pb.TokenizeRequest(text="ABCD").SerializeToString().replace(b"BC", b"\xc3(")),
    ],
)
def test_undecodable_bytes_get_invalid_argument_and_disturb_nothing(
    method: str, payload: bytes, client: GenerationClient, server: RunningServer
) -> None:
    channel = client.channel
    kind = channel.unary_stream if method == "Generate" else channel.unary_unary
    call = kind(
        f"/kvfleet.v1.Generation/{method}",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    with pytest.raises(grpc.RpcError) as err:
        answer = call(payload, timeout=10)
        if method == "Generate":
            list(answer)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("request: not a valid message: ")
    responses = list(client.generate("Still serving", **GOOD))
    assert responses[-1].finished.reason == pb.FINISH_REASON_LENGTH
    server.wait_until_idle()
