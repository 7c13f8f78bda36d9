"""One Serve replica: an engine whose outputs stream back through Serve handles, which reports
its load for routing and publishes its KV events for the routers' indexes."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

import ray
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster import autoscaling_policy as signals
from cluster.kv_publisher import KVEventPublisher
from cluster.latency_window import LatencyWindow
from cluster.replica_metrics import ReplicaMetricsServer
from router.kv_bus import StreamKeys
from worker.async_engine import AsyncEngine
from worker.config import EngineConfig
from worker.engine import Engine
from worker.kv_events import KVEvent
from worker.kv_transfer import KVHandle
from worker.load_report import LoadReport
from worker.messages import GenerationRequest, RequestOutput

_log = logging.getLogger(__name__)
RELEASE_TIMEOUT_S = 10.0  # past this the prefill replica's lease frees the blocks anyway


@dataclass(frozen=True, slots=True)
class KVState:
    """What a replica's KV cache holds, for operators and tests."""

    num_blocks: int
    num_free_blocks: int
    num_unfinished: int


@dataclass(frozen=True, slots=True)
class Pinned:
    """The first argument of a call meant for one replica (an operator's or a test's query):
    the request router sends it there and nowhere else."""

    replica_id: str


def replica_ids(app_name: str, deployment: str) -> list[str]:
    """The ids of the deployment's live replicas, from the Serve replica actors' names."""
    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    actors = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"].removeprefix(prefix) for a in actors if a["name"].startswith(prefix))


class EngineReplica:
    """The body of the Serve deployment (cluster/app.py wraps it). Its ``replica_id`` is Serve's
    unique replica id, the same one the request router sees, so events, load and routing
    decisions all name a replica the same way.

    In a disaggregated application a prefill replica's final outputs carry a KVHandle naming
    it, and a decode replica, given ``prefill_pool`` (the prefill deployment), tells the
    prefill replica to release the blocks once it has pulled them (or given up)."""

    def __init__(
        self,
        engine_config: EngineConfig,
        redis_url: str | None = None,
        namespace: str = "kvfleet",
        torch_threads: int | None = None,
        ttft_window_s: float | None = None,
        metrics_endpoint: tuple[str, int] | None = None,
        prefill_pool: DeploymentHandle | None = None,
    ) -> None:
        self.prefill_pool = prefill_pool
        self._releases: set[asyncio.Task[None]] = set()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        # A single-rank engine steps in a process of its own, beside Serve's event loop; a
        # multi-rank one drives Ray actors, so its driver stays in this Ray worker.
        if engine_config.world_size == 1:
            self.engine = AsyncEngine.spawn(engine_config, torch_threads)
        else:
            self.engine = AsyncEngine(Engine(engine_config))
        self._stats_seq = 0
        # Times to first token as this replica sees them, for a TTFT-driven autoscaler.
        self.ttft = LatencyWindow(ttft_window_s) if ttft_window_s else None
        # The engine's metrics under vLLM's names on (host, port) of its own; None: none.
        self.metrics: ReplicaMetricsServer | None = None
        if metrics_endpoint is not None:
            host, port = metrics_endpoint
            model = engine_config.model.name
            self.metrics = ReplicaMetricsServer(model, self.replica_id, host, port)
        self.publisher: KVEventPublisher | None = None
        if redis_url is not None:  # Serve runs constructors on the replica's event loop
            self.publisher = KVEventPublisher(
                redis_url, StreamKeys(namespace), self.replica_id, self._drain_kv_events
            )
            self.publisher.start()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """The request's outputs until its final one, which names this replica. Cancelling the
        Serve call (the client went away, a deadline passed) aborts the engine request."""
        stream = cast(AsyncGenerator[RequestOutput, None], self.engine.generate(request))
        started, ttft = time.monotonic(), self.ttft
        pulled_from = request.kv_source  # the blocks are pulled before the first output
        try:
            async with aclosing(stream):
                async for output in stream:
                    if pulled_from is not None:
                        self._release(pulled_from)
                        pulled_from = None
                    if ttft is not None and output.token_ids:
                        ttft.observe(time.monotonic() - started)
                        ttft = None  # the first token's time only
                    if output.finished:
                        output = self._stamped(output)
                    yield output
        finally:
            if pulled_from is not None:  # ended (cancelled, failed) before its first output
                self._release(pulled_from)

    def _stamped(self, final: RequestOutput) -> RequestOutput:
        handle = final.kv_handle
        if handle is not None:
            handle = dataclasses.replace(handle, replica_id=self.replica_id)
        return dataclasses.replace(final, served_by=self.replica_id, kv_handle=handle)

    def _release(self, handle: KVHandle) -> None:
        """Tell the prefill replica it may free the blocks (in the background: the stream
        does not wait; if the call fails, the lease ends it)."""
        if self.prefill_pool is None or not handle.leased or not handle.replica_id:
            return
        call = self.prefill_pool.release_kv.remote(Pinned(handle.replica_id), handle.request_id)

        async def release() -> None:
            try:
                await asyncio.wait_for(call, RELEASE_TIMEOUT_S)
            except Exception:
                call.cancel()
                _log.warning("could not release %s on %s", handle.request_id, handle.replica_id)

        task = asyncio.ensure_future(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def release_kv(self, pinned: Pinned, request_id: str) -> bool:
        """Free the blocks exported under the engine's ``request_id``; False if none held."""
        assert pinned.replica_id == self.replica_id, "routed to the wrong replica"
        return await self.engine.call(functools.partial(Engine.release_kv, request_id=request_id))

    async def record_routing_stats(self) -> dict[str, Any]:
        """Serve polls this and hands the result to every router's RequestRouter: the load
        report, when it was taken, and a counter so a router folds each report in once."""
        report = await self.engine.call(Engine.load_report)
        if self.metrics is not None:
            self.metrics.update(report)
        self._stats_seq += 1
        return {"seq": self._stats_seq, "time": time.time(), "load": dataclasses.asdict(report)}

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve polls this for the autoscaling policy (cluster/autoscaling_policy.py)."""
        report = await self.engine.call(Engine.load_report)
        ttft = self.ttft.quantile(0.9) if self.ttft is not None else None
        return {
            signals.WAITING: report.num_waiting,
            signals.PREFILL_TOKENS: report.prefill_tokens,
            signals.RUNNING: report.num_running,
            signals.TTFT_P90_S: -1.0 if ttft is None else ttft,
        }

    def abort(self, pinned: Pinned, request_id: str) -> bool:
        """Abort ``request_id`` if this replica runs it: an Abort that reached a front door
        other than the one streaming the request. Its stream there ends with reason abort."""
        assert pinned.replica_id == self.replica_id, "routed to the wrong replica"
        return self.engine.abort(request_id)

    async def kv_state(self, pinned: Pinned) -> KVState:
        """Checks the block pool's invariants, then says what it holds."""
        assert pinned.replica_id == self.replica_id, "routed to the wrong replica"
        return await self.engine.call(_checked_kv_state)

    async def load(self, pinned: Pinned) -> LoadReport:
        """This replica's load report, for operators."""
        assert pinned.replica_id == self.replica_id, "routed to the wrong replica"
        return await self.engine.call(Engine.load_report)

    def metrics_address(self, pinned: Pinned) -> str:
        """host:port of this replica's /metrics; "" when it has none."""
        assert pinned.replica_id == self.replica_id, "routed to the wrong replica"
        return self.metrics.address if self.metrics is not None else ""

    def engine_config(self) -> EngineConfig:
        """What this replica serves with: a router builds its RequestBuilder from it."""
        return self.engine.config

    def check_health(self) -> None:
        """Serve calls this periodically; a replica whose engine stopped is replaced."""
        if not self.engine.alive:
            raise RuntimeError(f"replica {self.replica_id}: the engine stopped after a failure")

    async def _drain_kv_events(self) -> list[KVEvent]:
        return await self.engine.call(Engine.drain_kv_events)

    def __del__(self) -> None:  # Serve's graceful shutdown hook
        if self.metrics is not None:
            self.metrics.stop()
        self.engine.shutdown()


def _checked_kv_state(engine: Engine) -> KVState:
    """Run in the engine (by reference: it may be another process)."""
    engine.check_integrity()
    return KVState(engine.num_blocks, engine.kv.pool.num_free, engine.scheduler.num_unfinished)


def load_report(stats: dict[str, Any]) -> LoadReport:
    """The LoadReport inside a replica's routing stats."""
    return LoadReport(**stats["load"])
