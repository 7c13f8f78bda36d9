"""A replica dying mid-stream: its calls end UNAVAILABLE, the others carry on, Serve replaces it
and the router routes to the replacement."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest
import ray

from cluster.app import DEPLOYMENT
from router.client import GenerationClient
from tests.cluster.serve.conftest import NUM_REPLICAS, Fleet
from tests.cluster.serve.routing_helpers import finish, token_prompt

LONG = {"max_tokens": 1500, "temperature": 0.0, "ignore_eos": True}


def test_killed_replica_fails_its_calls_unavailable_and_is_replaced(
    client: GenerationClient, fleet: Fleet
) -> None:
    prefix = token_prompt(4000, 160)
    victim = finish(client, prefix + token_prompt(4001, 8)).replica
    # The prefix keeps its siblings on the victim (test_routing shows the policy does this).
    streams = [iter(client.generate(prefix + token_prompt(4010 + i, 8), **LONG)) for i in range(3)]
    for stream in streams:
        next(stream)
    actor_name = f"SERVE_REPLICA::{fleet.config.app_name}#{DEPLOYMENT}#{victim}"
    ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)
    for stream in streams:
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "actor" not in err.value.details().lower()  # Ray's internals stay in the log
        assert "pid" not in err.value.details().lower()
    # Requests keep being served meanwhile, by the survivor, then by the replacement too.
    deadline, served = time.monotonic() + 120, set()
    for i in itertools.count():
        served.add(finish(client, token_prompt(4100 + i, 40)).replica)
        assert victim not in served
        if len(served) == NUM_REPLICAS:
            break
        assert time.monotonic() < deadline, "Serve did not replace the replica"
        time.sleep(0.2)
    fleet.wait_until_idle()
