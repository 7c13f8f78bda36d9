"""What the front doors (gRPC and HTTP) serve validated requests with: one in-process engine
(cluster/local_backend.py) or Ray Serve replicas chosen by the routing policy
(cluster/serve_backend.py)."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator

from prometheus_client.registry import Collector

from worker.load_report import LoadReport
from worker.messages import GenerationRequest, RequestOutput
from worker.request_builder import RequestBuilder


class Backend(abc.ABC):
    """Runs validated requests. ``requests`` validates and tokenizes exactly as the engines
    behind it do, so the front door refuses bad input before anything is queued. Errors are
    kvfleet's own (worker/errors.py), so that each front door can map each to one status code.
    Closing a ``generate`` stream before its final output aborts the request."""

    requests: RequestBuilder
    model_name: str

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Yield the request's deltas until the final one; raises (DuplicateRequestError,
        OverloadedError, NoReplicaError, ...) before anything is queued when it cannot run."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> bool:
        """Abort a running request; False if no such request is running."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether a request sent now can be served."""

    async def load_reports(self) -> dict[str, LoadReport]:
        """Each engine's latest load report, by engine id, for the metrics; none by default."""
        return {}

    def metrics_collectors(self) -> list[Collector]:
        """What this backend adds to its front door's /metrics; nothing by default."""
        return []
