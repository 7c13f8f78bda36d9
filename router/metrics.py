"""Prometheus metrics of a front door, under vLLM's names, so that the dashboards, KEDA rules
and inference gateways built for vLLM read kvfleet unchanged.

Per request, measured where the front door sees the stream (both doors, one registry): time to
first token and end-to-end latency from the backend call, inter-token latency (an output that
carries k tokens after dt counts k gaps of dt/k), prompt and generated tokens, finished requests
by reason, speculative decoding's verified and accepted drafts. Per engine, read from its load
report when scraped: running and waiting requests, KV cache usage, prefix cache queries and hits
(cumulative token counts), and the cache's size.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.load_report import LoadReport
from worker.messages import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's bucket boundaries, so that histogram quantiles compare across the two.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class ServingMetrics:
    """One registry per front door process; ``metered`` wraps each backend stream."""

    def __init__(self, model_name: str, collectors: Sequence[Collector] = ()) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token, from the backend call.",
            labels, registry=self.registry, buckets=TTFT_BUCKETS,
        )  # fmt: skip
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive output tokens.",
            labels, registry=self.registry, buckets=ITL_BUCKETS,
        )  # fmt: skip
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency, from the backend call to the final output.",
            labels, registry=self.registry, buckets=E2E_BUCKETS,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens of finished requests.", labels,
            registry=self.registry,
        )  # fmt: skip
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generated tokens.", labels, registry=self.registry
        )
        self.finished = Counter(
            "vllm:request_success", "Finished requests by finish reason.",
            [*labels, "finished_reason"], registry=self.registry,
        )  # fmt: skip
        self.cached_tokens = Counter(
            "kvfleet_cached_tokens",
            "Prompt tokens the serving engine found in its prefix cache, per finished request.",
            registry=self.registry,
        )
        self.draft_tokens = Counter(
            "vllm:spec_decode_num_draft_tokens",
            "Speculative decoding: drafts verified, per finished request.",
            labels, registry=self.registry,
        )  # fmt: skip
        self.accepted_tokens = Counter(
            "vllm:spec_decode_num_accepted_tokens",
            "Speculative decoding: drafts the target accepted, per finished request.",
            labels, registry=self.registry,
        )  # fmt: skip
        self._engines = EngineCollector(model_name)
        self.registry.register(self._engines)
        for collector in collectors:
            self.registry.register(collector)

    async def metered(
        self, stream: AsyncIterator[RequestOutput]
    ) -> AsyncGenerator[RequestOutput, None]:
        """``stream``'s outputs, unchanged, timed as they pass. Closing this closes ``stream``."""
        # The model label is fixed: its children are looked up once, not per token.
        model = self.model_name
        ttft, itl, e2e = self.ttft.labels(model), self.itl.labels(model), self.e2e.labels(model)
        start = last = time.perf_counter()
        first = True
        generated = 0
        try:
            async for output in stream:
                now = time.perf_counter()
                count = len(output.token_ids)
                if count:
                    if first:
                        ttft.observe(now - start)
                        first = False
                    else:
                        gap = (now - last) / count
                        for _ in range(count):
                            itl.observe(gap)
                    last = now
                    generated += count
                if output.finished:
                    e2e.observe(now - start)
                    self.prompt_tokens.labels(model).inc(output.num_prompt_tokens)
                    self.cached_tokens.inc(output.num_cached_tokens)
                    self.draft_tokens.labels(model).inc(output.num_draft_tokens)
                    self.accepted_tokens.labels(model).inc(output.num_accepted_tokens)
                    self.finished.labels(model, output.finish_reason or "unknown").inc()
                yield output
        finally:
            self.generation_tokens.labels(model).inc(generated)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def render(self, loads: Mapping[str, LoadReport]) -> bytes:
        """The exposition text, with ``loads`` (engine id -> its latest report) as the engine
        gauges."""
        self._engines.loads = dict(loads)
        return generate_latest(self.registry)


class EngineCollector(Collector):
    """Engine gauges and counters from load reports, labelled by engine as vLLM labels them:
    on a front door with its engine in the same process (`kvfleet serve`), and on each Serve
    replica's own endpoint (cluster/replica_metrics.py); a fleet's front doors leave them to
    the replicas, so that a dashboard summing every target counts each engine once."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.loads: dict[str, LoadReport] = {}

    def collect(self) -> Iterator[Metric]:
        labels = ["model_name", "engine"]
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Requests in the running batch.", labels=labels
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Requests waiting to be scheduled.", labels=labels
        )
        usage = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).", labels=labels
        )
        queries = CounterMetricFamily(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
            labels=labels,
        )  # fmt: skip
        hits = CounterMetricFamily(
            "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", labels=labels
        )
        config = GaugeMetricFamily(
            "vllm:cache_config_info", "The KV cache's configuration.",
            labels=[*labels, "num_gpu_blocks"],
        )  # fmt: skip
        for engine, load in sorted(self.loads.items()):
            values = [self.model_name, engine]
            running.add_metric(values, load.num_running)
            waiting.add_metric(values, load.num_waiting)
            usage.add_metric(values, load.kv_usage)
            queries.add_metric(values, load.prefix_queries)
            hits.add_metric(values, load.prefix_hits)
            config.add_metric([*values, str(load.num_blocks)], 1)
        yield from (running, waiting, usage, queries, hits, config)
