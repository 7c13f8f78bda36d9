"""A pool that grows under a burst and shrinks after it on kvfleet's queue-depth policy, and a
downscale in the middle of traffic that loses nothing: real Serve autoscaling, real replicas."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from ray import serve

from cluster import cluster_config
from cluster.app import DEPLOYMENT, deploy
from cluster.front_door import FrontDoorThread
from cluster.pool_status import ReplicaCounts, replica_counts
from cluster.replica import replica_ids
from router.load_generator import ClosedLoop
from tests.cluster.serve.conftest import Fleet
from tests.net import free_port

APP = "kvfleet-autoscale"
TOKENS = 48
LONG_TOKENS = 1000


@pytest.fixture
def autoscaled_pool(fleet: Fleet) -> Iterator[FrontDoorThread]:
    """One replica to start, two at most; a replica queues beyond 4 running requests, so a
    burst of 16 makes a queue that only a second replica relieves."""
    pool = {
        "replicas": 1,
        "engine": {"dtype": "float32", "kv_cache_mb": 16, "max_num_seqs": 4},
        "autoscaling": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_waiting_per_replica": 1,
            "target_running_per_replica": 4,
            "upscale_delay_s": 0,
            "downscale_delay_s": 3,
            "look_back_period_s": 1.5,
            "metrics_interval_s": 0.5,
        },
        "drain_grace_s": 60,
    }
    config = cluster_config.load(
        {
            "model": str(fleet.config.model),
            "app_name": APP,
            "pools": {"colocated": pool},
            "redis": {"url": fleet.redis.url},
            # Round-robin: the long requests of the downscale land on both replicas for sure.
            "router": {"policy": "round_robin"},
        }
    )
    deploy(config)
    door = FrontDoorThread(APP, port=free_port())
    try:
        yield door
    finally:
        door.stop()
        serve.delete(APP)


def _wait_for(predicate: Callable[[ReplicaCounts], bool], timeout_s: float) -> float:
    start = time.monotonic()
    while not predicate(counts := replica_counts(APP)):
        assert time.monotonic() - start < timeout_s, f"replicas still {counts}"
        time.sleep(0.1)
    return time.monotonic() - start


def test_a_burst_scales_the_pool_up_then_down_losing_nothing(
    autoscaled_pool: FrontDoorThread,
) -> None:
    assert replica_counts(APP).running == 1
    load = ClosedLoop(autoscaled_pool.target, 16, lambda i, n: f"Client {i}, request {n}", TOKENS)
    try:
        _wait_for(lambda c: c.running == 2, timeout_s=90)
        [first] = {r.replica for r in load.snapshot()}
        up = time.monotonic()
        while not any(r.replica != first and r.finished_at > up for r in load.snapshot()):
            time.sleep(0.1)  # until the new replica has served a request of the burst
        # The burst ends; four clients keep long requests (seconds each) in flight on both
        # replicas (four fit on one at target_running_per_replica).
        load.active, load.max_tokens = 4, LONG_TOKENS
        _wait_for(lambda c: c.running == 1, timeout_s=90)
        draining = time.monotonic()
        _wait_for(lambda c: c.total == 1, timeout_s=90)  # the drained replica stopped
    finally:
        results = load.stop()
    assert all(r.answered for r in results)  # every request answered, in full
    [kept] = replica_ids(APP, DEPLOYMENT)
    drained = {r.replica for r in results} - {kept}
    # The replica that was stopped finished long requests after it stopped taking new ones.
    assert any(r.replica in drained and r.finished_at > draining for r in results), results
