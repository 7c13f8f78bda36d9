"""A replica's own /metrics: its engine's gauges and counters under vLLM's names (running and
waiting requests, KV cache usage, prefix cache queries and hits, the cache's size), the way a
vLLM pod exports them, so per-replica dashboards and KEDA rules work unchanged."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

from router.metrics import EngineCollector
from worker.load_report import LoadReport


class ReplicaMetricsServer:
    """prometheus-client's HTTP server on ``host:port`` (port 0: any free one), in a thread of
    its own; ``update`` hands it the replica's latest load report."""

    def __init__(self, model_name: str, replica_id: str, host: str, port: int) -> None:
        self.replica_id = replica_id
        self.engines = EngineCollector(model_name)
        registry = CollectorRegistry()
        registry.register(self.engines)
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.address = f"{host}:{self._server.server_port}"

    def update(self, report: LoadReport) -> None:
        self.engines.loads = {self.replica_id: report}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
