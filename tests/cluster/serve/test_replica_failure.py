"""A replica dying mid-stream: its streams carry on on the survivor with exactly the tokens an
undisturbed run gives, the router stops choosing the dead replica at once, and Serve replaces
it."""

from __future__ import annotations

import itertools
import time

import ray

from cluster import live_routers
from cluster.app import DEPLOYMENT
from router.client import GenerationClient
from tests.cluster.serve.conftest import NUM_REPLICAS, Fleet
from tests.cluster.serve.routing_helpers import finish, token_prompt

GREEDY = {"max_tokens": 400, "temperature": 0.0, "ignore_eos": True}


def test_a_killed_replicas_streams_continue_elsewhere_with_the_undisturbed_tokens(
    client: GenerationClient, fleet: Fleet
) -> None:
    prefix = token_prompt(4000, 160)
    victim = finish(client, prefix + token_prompt(4001, 8)).replica
    prompts = [prefix + token_prompt(4010 + i, 8) for i in range(3)]
    # Undisturbed, one at a time (greedy tokens do not depend on the batch).
    expected = [[t for r in client.generate(p, **GREEDY) for t in r.token_ids] for p in prompts]
    # The prefix keeps them on the victim (test_routing shows the policy does this).
    streams = [iter(client.generate(p, **GREEDY)) for p in prompts]
    received: list[list[int]] = [[] for _ in prompts]
    for stream, tokens in zip(streams, received, strict=True):
        for _ in range(3):
            tokens += next(stream).token_ids
    actor_name = f"SERVE_REPLICA::{fleet.config.app_name}#{DEPLOYMENT}#{victim}"
    ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)
    for stream, tokens, want in zip(streams, received, expected, strict=True):
        responses = list(stream)
        tokens += [t for r in responses for t in r.token_ids]
        assert tokens == want  # no gap, no repeat
        finished = responses[-1].finished
        assert finished.replica != victim and finished.usage.completion_tokens == 400
        assert finished.usage.prompt_tokens == len(prompts[0])
    router = live_routers.LIVE[live_routers.key(fleet.config.app_name, DEPLOYMENT)]
    assert router.counts.replicas_lost == 1  # dropped when its calls failed; only that one
    assert victim not in router.policy.replica_ids
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
