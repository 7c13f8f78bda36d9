"""A fleet's metrics: each replica's /metrics has its engine's figures under vLLM's names; a
front door's has the requests it served (vLLM's names) and its routing (kvfleet_*), but not
the engines' (a dashboard summing every target counts each engine once)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cluster.front_door import FrontDoorThread
from cluster.http_options import HTTPOptions
from cluster.replica import Pinned
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
    after = scrape(url)
    assert (
        _total(after, "vllm:generation_tokens_total")
        - _total(before, "vllm:generation_tokens_total")
        == 6 * 4
    )
    assert not [k for k in after if k.startswith(("vllm:kv_cache", "vllm:num_requests"))]
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


def test_each_replica_serves_its_engines_metrics(client: GenerationClient, fleet: Fleet) -> None:
    addresses = {
        replica_id: fleet.handle.metrics_address.remote(Pinned(replica_id)).result(timeout_s=30)
        for replica_id in fleet.replica_ids()
    }
    prompt = "Counted by whichever replica serves it, once. " * 3
    list(client.generate(prompt, max_tokens=2, ignore_eos=True))
    fleet.wait_until_idle()
    deadline = time.monotonic() + 10
    while True:
        scraped = {r: scrape(f"http://{address}/metrics") for r, address in addresses.items()}
        queries = sum(_total(s, "vllm:prefix_cache_queries_total") for s in scraped.values())
        if queries > 0:
            break
        assert time.monotonic() < deadline, "no replica's metrics showed the request"
        time.sleep(0.1)  # the replica refreshes them with each load report
    for replica_id, samples in scraped.items():
        engine = f"engine={replica_id},model_name=demo-tiny"
        assert f"vllm:num_requests_running{{{engine}}}" in samples
        assert f"vllm:num_requests_waiting{{{engine}}}" in samples
        assert 0.0 <= samples[f"vllm:kv_cache_usage_perc{{{engine}}}"] <= 1.0
        [config] = [k for k in samples if k.startswith("vllm:cache_config_info{")]
        assert f"engine={replica_id}," in config
