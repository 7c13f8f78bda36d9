"""A disaggregated application beside the colocated fleet on the same Ray cluster: a prefill and
a decode pool, each a deployment with its own router, behind one gRPC front door. The client
sees one ordinary stream whose final message names both replicas; greedy output equals the
colocated fleet's; each pool's blocks all come back."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray import serve
from rich.console import Console

from cluster import cluster_config
from cluster.app import DEPLOYMENTS, deploy
from cluster.fleet_status import FleetStatus, fleet_status, render
from cluster.front_door import FrontDoorThread
from cluster.replica import replica_ids
from cluster.run_state import RunState
from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerationClient
from tests.cluster.serve.conftest import KV_CACHE_MB, Fleet, wait_until_idle
from tests.net import free_port

APP = "kvfleet-pd"
LONG = "a prefill pool runs the prompt and the decode pool pulls its blocks " * 6
SHORT = "hello there"
LOCAL_PREFILL_TOKENS = 24  # prompts with more uncached tokens than this go to the prefill pool


@pytest.fixture(scope="module")
def disaggregated(fleet: Fleet, demo_model_dir: Path) -> Iterator[FrontDoorThread]:
    engine = {"dtype": "float32", "kv_cache_mb": KV_CACHE_MB}
    config = cluster_config.load(
        {
            "model": str(demo_model_dir),
            "app_name": APP,
            "pools": {
                "prefill": {"replicas": 1, "engine": engine},
                "decode": {"replicas": 1, "engine": engine},
            },
            "disaggregation": {"local_prefill_tokens": LOCAL_PREFILL_TOKENS},
            "redis": {"url": fleet.redis.url},
        }
    )
    deploy(config)
    thread = FrontDoorThread(APP, port=free_port())
    try:
        yield thread
    finally:
        thread.stop()
        serve.delete(APP)


def _generate(target: str, prompt: str, max_tokens: int = 16) -> tuple[list[int], pb.Finished]:
    with GenerationClient(target) as client:
        tokens: list[int] = []
        finished = None
        for message in client.generate(prompt, max_tokens=max_tokens, temperature=0.0):
            tokens += message.token_ids
            if message.HasField("finished"):
                finished = message.finished
    assert finished is not None
    return tokens, finished


def _rendered(status: FleetStatus) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render(status))
    return console.export_text()


def test_a_long_prompt_is_prefilled_by_the_prefill_pool_and_decoded_by_the_other(
    fleet: Fleet, disaggregated: FrontDoorThread
) -> None:
    expected, _ = _generate(fleet.target, LONG)
    tokens, finished = _generate(disaggregated.target, LONG)
    assert tokens == expected
    assert finished.prefill_replica in replica_ids(APP, DEPLOYMENTS["prefill"])
    assert finished.replica in replica_ids(APP, DEPLOYMENTS["decode"])
    assert finished.usage.transferred_tokens == finished.usage.prompt_tokens - 1
    # The decode replica released the prefill replica's lease once it had pulled.
    wait_until_idle(APP, DEPLOYMENTS["prefill"])
    wait_until_idle(APP, DEPLOYMENTS["decode"])


def test_a_short_prompt_is_prefilled_where_it_decodes(
    fleet: Fleet, disaggregated: FrontDoorThread
) -> None:
    expected, _ = _generate(fleet.target, SHORT)
    tokens, finished = _generate(disaggregated.target, SHORT)
    assert tokens == expected
    assert finished.prefill_replica == ""
    assert finished.usage.transferred_tokens == 0
    wait_until_idle(APP, DEPLOYMENTS["decode"])


def test_status_shows_each_pool_with_its_replicas(disaggregated: FrontDoorThread) -> None:
    state = RunState(0, disaggregated.target, "", "", "", APP, 0, 0, 0)
    status = fleet_status(state)
    assert [pool.pool for pool in status.pools] == ["prefill", "decode"]
    for pool in status.pools:
        assert pool.counts.running == 1
        [replica] = pool.replicas
        assert replica.kv is not None and replica.load is not None  # integrity checked
    assert "pool prefill: 1/1 replicas ready" in _rendered(status)
