"""A front door's routing metrics, as `kvfleet_*` (Prometheus reserves ':' for recording rules;
the engine's own metrics keep vLLM's names): decisions by reason, the cached tokens the policy
predicted (beside the cached tokens the replicas reported, counted with the request metrics),
the index's size, the KV-event feed's lag and its Redis connection, and the requests in flight
through this front door."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster import live_routers


class RouterCollector(Collector):
    """Reads the application's live request router in this process when scraped (none yet:
    only the front door's own figures)."""

    def __init__(self, app_name: str, deployment: str, in_flight: Callable[[], int]) -> None:
        self.app_name = app_name
        self.deployment = deployment
        self.in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "kvfleet_router_queue_depth", "Requests in flight through this front door."
        )
        queue.add_metric([], self.in_flight())
        yield queue
        router = live_routers.LIVE.get(live_routers.key(self.app_name, self.deployment))
        if router is None:
            return
        counts = router.counts
        decisions = CounterMetricFamily(
            "kvfleet_routing_decisions", "Routing decisions by reason.", labels=["reason"]
        )
        for reason in ("prefix", "load", "overloaded", "rerouted"):
            decisions.add_metric([reason], getattr(counts, reason))
        yield decisions
        yield CounterMetricFamily(
            "kvfleet_router_replicas_lost",
            "Replicas dropped from routing because a request's call on them failed.",
            value=counts.replicas_lost,
        )
        yield CounterMetricFamily(
            "kvfleet_predicted_cached_tokens",
            "Prompt tokens the policy expected the chosen replica to hold.",
            value=counts.predicted_cached_tokens,
        )
        index = router.policy.index
        yield GaugeMetricFamily(
            "kvfleet_index_entries", "Block entries in the routing index.",
            value=index.num_entries(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "kvfleet_index_bytes", "Memory of the routing index's tables.",
            value=index.memory_bytes(),
        )  # fmt: skip
        subscriber = router.subscriber
        if subscriber is not None:
            yield GaugeMetricFamily(
                "kvfleet_redis_connected", "1 while the KV-event feed reaches Redis.",
                value=float(subscriber.stats.connected),
            )  # fmt: skip
            yield GaugeMetricFamily(
                "kvfleet_kv_event_lag_seconds",
                "From Redis storing the last KV-event batch to the index holding it.",
                value=subscriber.stats.lag_s,
            )
            yield CounterMetricFamily(
                "kvfleet_kv_event_bad_entries", "KV-event entries that could not be applied.",
                value=subscriber.stats.bad_entries,
            )  # fmt: skip
