"""A fleet front door's /metrics: the replicas' engine gauges under vLLM's names, labelled by
replica, and the router's own kvfleet_* figures, moving with what it routes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cluster.front_door import FrontDoorThread
from cluster.http_options import HTTPOptions
from router.client import GenerationClient
from tests.cluster.serve.conftest import APP, Fleet
from tests.net import free_port
from tests.prometheus import scrape


@pytest.fixture(scope="module")
def door_with_http(fleet: Fleet) -> Iterator[tuple[FrontDoorThread, str]]:
    port = free_port()
    http = HTTPOptions(port=port, chat_template=None, request_timeout_s=None)
    door = FrontDoorThread(APP, port=free_port(), http=http)
    try:
        yield door, f"http://127.0.0.1:{port}/metrics"
    finally:
        door.stop()


def _total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(f"{name}{{"))


def test_router_and_replica_metrics_move_with_the_traffic(
    door_with_http: tuple[FrontDoorThread, str], fleet: Fleet
) -> None:
    door, url = door_with_http
    before = scrape(url)
    shared = "A system prompt long enough to span several KV blocks, shared by every request. " * 4
    with GenerationClient(door.target) as client:
        for i in range(6):
            list(client.generate(f"{shared}Question {i}?", max_tokens=4, ignore_eos=True))
    fleet.wait_until_idle()
    deadline = time.monotonic() + 10
    while _total(after := scrape(url), "vllm:prefix_cache_queries_total") == 0:
        assert time.monotonic() < deadline, "no load report showed the requests"
        time.sleep(0.1)  # replicas report their load every stats_period_s
    engines = {k for k in after if k.startswith("vllm:kv_cache_usage_perc{")}
    assert {k.split("engine=")[1].split(",")[0] for k in engines} == set(fleet.replica_ids())
    assert _total(after, "vllm:cache_config_info") == len(fleet.replica_ids())
    decisions = _total(after, "kvfleet_routing_decisions_total") - _total(
        before, "kvfleet_routing_decisions_total"
    )
    assert decisions == 6
    assert after["kvfleet_routing_decisions_total{reason=prefix}"] > before.get(
        "kvfleet_routing_decisions_total{reason=prefix}", 0.0
    )  # the shared prompt was routed to where it is cached
    predicted = _total(after, "kvfleet_predicted_cached_tokens_total")
    actual = _total(after, "kvfleet_cached_tokens_total")
    assert predicted > 0 and actual > 0
    assert after["kvfleet_index_entries{}"] > 0 and after["kvfleet_index_bytes{}"] > 0
    assert after["kvfleet_redis_connected{}"] == 1.0
    assert 0.0 <= after["kvfleet_kv_event_lag_seconds{}"] < 30.0
    assert after["kvfleet_router_queue_depth{}"] == 0.0
