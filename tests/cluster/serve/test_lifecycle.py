"""Bad input, cancel, deadline and Abort through the router and Serve: each gets its status,
and every KV block on every replica comes back."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.front_door import FrontDoorThread
from cluster.serve_backend import ServeBackend
from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerationClient
from router.grpc_api.status import FIELD_TRAILER
from tests.cluster.serve.conftest import Fleet
from tests.net import free_port
from tests.router.grpc_api.test_api import GOOD, _bad_cases
from worker.errors import NoReplicaError
from worker.sampling_params import SamplingParams

LONG = {"max_tokens": 1500, "temperature": 0.0, "ignore_eos": True}


def test_every_bad_input_gets_its_status_and_disturbs_nothing(
    client: GenerationClient, fleet: Fleet
) -> None:
    good = iter(client.generate("Unaffected by its neighbours", **GOOD))
    first = next(good)
    [model] = client.list_models()
    for name, prompt, sampling, field in _bad_cases(model.vocab_size):
        with pytest.raises(grpc.RpcError) as err:
            list(client.generate(prompt, **sampling))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert err.value.details().startswith(f"{field}: "), (name, err.value.details())
        assert (FIELD_TRAILER, field) in err.value.trailing_metadata(), name
    with pytest.raises(grpc.RpcError) as err:
        list(client.generate("hi", model="no-such-model", **GOOD))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rest = list(good)
    assert len(first.token_ids) + sum(len(r.token_ids) for r in rest) == 32
    fleet.wait_until_idle()


def test_duplicate_request_id_is_already_exists(client: GenerationClient, fleet: Fleet) -> None:
    first = client.generate("First", request_id="dup", **LONG)
    next(iter(first))
    with pytest.raises(grpc.RpcError) as err:
        list(client.generate("Second", request_id="dup", **GOOD))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    first.cancel()
    fleet.wait_until_idle()


def test_cancel_frees_the_replicas_blocks(client: GenerationClient, fleet: Fleet) -> None:
    streams = [client.generate(f"Cancelled mid-stream {i}", **LONG) for i in range(4)]
    for stream in streams:
        next(iter(stream))
    for stream in streams:
        stream.cancel()
    fleet.wait_until_idle()


def test_deadline_is_deadline_exceeded_and_frees_blocks(
    client: GenerationClient, fleet: Fleet
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(client.generate("Past its deadline", timeout=1.0, **LONG))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    fleet.wait_until_idle()


def test_abort_ends_the_stream_with_abort(client: GenerationClient, fleet: Fleet) -> None:
    stream = iter(client.generate("Aborted by id", request_id="to-abort", **LONG))
    next(stream)
    assert client.abort("to-abort")
    assert not client.abort("no-such-request")
    last = list(stream)[-1]
    assert last.finished.reason == pb.FINISH_REASON_ABORT
    assert last.finished.usage.completion_tokens > 0
    fleet.wait_until_idle()


def test_health_serving_and_models_listed(client: GenerationClient, fleet: Fleet) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    [model] = client.list_models()
    assert model.name == fleet.config.model.name
    assert client.tokenize("two words") == fleet.front_door.backend.requests.tokenizer.encode(
        "two words"
    )


def test_a_full_router_queue_is_resource_exhausted(fleet: Fleet) -> None:
    small = FrontDoorThread(fleet.config.app_name, port=free_port(), max_queued_requests=1)
    try:
        with GenerationClient(small.target) as client:
            running = client.generate("Holds the only slot", **LONG)
            next(iter(running))
            with pytest.raises(grpc.RpcError) as err:
                list(client.generate("One too many", **GOOD))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            running.cancel()
    finally:
        small.stop()
    fleet.wait_until_idle()


def test_no_running_replica_is_unavailable(fleet: Fleet) -> None:
    # A backend whose application has no running replica (here: none by that name) refuses
    # at once instead of queueing in Serve until a replica appears.
    live = fleet.front_door.backend
    backend = ServeBackend(live.handle, live.requests, live.model_name, "no-such-app")

    async def attempt() -> None:
        await backend.start()
        try:
            assert not backend.healthy()
            request = live.requests.build("r", "hi", SamplingParams(max_tokens=4))
            with pytest.raises(NoReplicaError):
                await anext(backend.generate(request))
        finally:
            await backend.close()

    fleet.thread.run(attempt())
