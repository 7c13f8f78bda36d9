"""One real fleet for the package: a local Ray, a real redis-server, the Serve application with
two replicas of the demo model, and the gRPC router on a loopback port, its event loop on a
thread so tests stay synchronous."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray import serve

from cluster import cluster_config
from cluster.app import DEPLOYMENT, deploy
from cluster.cluster_config import ClusterConfig
from cluster.fleet_status import kv_states
from cluster.front_door import FrontDoorThread
from cluster.redis_server import RedisServer
from cluster.replica import KVState, replica_ids
from router.client import GenerationClient
from tests.net import free_port

APP = "kvfleet-test"
NUM_REPLICAS = 2
KV_CACHE_MB = 16


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here runs on the Serve fleet: all are slow."""
    for item in items:
        if item.path.parent == HERE:
            item.add_marker(pytest.mark.slow)


class Fleet:
    """The running fleet, and what tests read from it."""

    def __init__(self, config: ClusterConfig, redis: RedisServer) -> None:
        self.config = config
        self.redis = redis
        deploy(config)
        self.handle = serve.get_deployment_handle(DEPLOYMENT, app_name=config.app_name)
        self.thread = FrontDoorThread(config.app_name, port=free_port())
        self.front_door = self.thread.front_door
        self.target = self.thread.target

    def replica_ids(self) -> list[str]:
        return replica_ids(self.config.app_name, DEPLOYMENT)

    def kv_states(self) -> dict[str, KVState]:
        """Every replica's KV state, integrity checked, by replica id."""
        return kv_states(self.config.app_name)

    def wait_until_idle(self, timeout_s: float = 10.0) -> None:
        """No request left on any replica and every KV block back in its pool."""
        wait_until_idle(self.config.app_name, DEPLOYMENT, timeout_s)

    def close(self) -> None:
        self.thread.stop()


def _idle(state: KVState) -> bool:
    return state.num_unfinished == 0 and state.num_free_blocks == state.num_blocks


def wait_until_idle(app_name: str, deployment: str, timeout_s: float = 10.0) -> None:
    """No request left on any replica of the deployment and every KV block back in its pool
    (nothing leased either)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = kv_states(app_name, deployment)
        if all(_idle(state) for state in states.values()):
            return
        assert time.monotonic() < deadline, f"{deployment}: requests or blocks held: {states}"
        time.sleep(0.05)


@pytest.fixture(scope="package")
def fleet(demo_model_dir: Path) -> Iterator[Fleet]:
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    redis = RedisServer()
    redis.start()
    engine = {"dtype": "float32", "kv_cache_mb": KV_CACHE_MB}
    config = cluster_config.load(
        {
            "model": str(demo_model_dir),
            "app_name": APP,
            "pools": {"colocated": {"replicas": NUM_REPLICAS, "engine": engine}},
            "redis": {"url": redis.url},
        }
    )
    running = Fleet(config, redis)
    try:
        yield running
    finally:
        running.close()
        serve.shutdown()
        ray.shutdown()
        redis.stop()


@pytest.fixture(scope="package")
def client(fleet: Fleet) -> Iterator[GenerationClient]:
    with GenerationClient(fleet.target) as client:
        yield client
