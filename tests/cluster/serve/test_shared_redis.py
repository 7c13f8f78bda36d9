"""Several routers share the replicas' KV events through Redis; Redis going away loses nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import ray
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.client import GenerationClient
from router.kv_bus import StreamKeys
from tests.cluster.serve.conftest import Fleet
from tests.cluster.serve.routing_helpers import SHORT, finish, token_prompt
from tests.net import free_port

EVENT_PROPAGATION_S = 2.0  # replica -> Redis -> the other router's index, with a wide margin


@pytest.fixture
def second_router(fleet: Fleet) -> Iterator[GenerationClient]:
    """`kvfleet router`: another process, its own Serve handle, index and Redis subscriber."""
    port = free_port()
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "cluster.cli", "router", f"--ray-address={address}"]
    command += [f"--app-name={fleet.config.app_name}", f"--port={port}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with GenerationClient(f"127.0.0.1:{port}") as client:
            _wait_serving(client, process)
            yield client
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_serving(client: GenerationClient, process: subprocess.Popen[bytes]) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError("the second router did not start serving")


def test_two_routers_send_a_prefix_to_the_same_replica(
    client: GenerationClient, second_router: GenerationClient, fleet: Fleet
) -> None:
    prefixes = [token_prompt(2000 + k, 160) for k in range(6)]
    placed = [
        finish(client, p + token_prompt(2100 + k, 16)).replica for k, p in enumerate(prefixes)
    ]
    time.sleep(EVENT_PROPAGATION_S)
    # The second router never routed these prefixes: only the replicas' events tell it.
    again = [finish(second_router, p + token_prompt(2200 + k, 16)) for k, p in enumerate(prefixes)]
    assert [f.replica for f in again] == placed
    assert all(f.usage.cached_tokens >= 160 for f in again)
    fleet.wait_until_idle()


def test_redis_restart_in_the_middle_of_traffic_loses_no_request(
    client: GenerationClient, fleet: Fleet
) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def traffic(worker: int) -> None:
        for i in range(12):
            try:
                responses = list(
                    client.generate(token_prompt(3000 + 100 * worker + i, 40), **SHORT)
                )
                results.append(responses[-1].finished.usage.completion_tokens)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    while len(results) < 6 and not errors:
        time.sleep(0.01)
    fleet.redis.restart()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert results == [SHORT["max_tokens"]] * 36
    # The replicas reconnected and republished their snapshots into the new Redis.
    keys = StreamKeys(fleet.config.app_name)
    store = redis.Redis.from_url(fleet.redis.url)
    deadline = time.monotonic() + 30
    while not all(store.exists(keys.snapshot(r)) for r in fleet.replica_ids()):
        assert time.monotonic() < deadline, "replicas did not republish after the restart"
        time.sleep(0.1)
    fleet.wait_until_idle()
