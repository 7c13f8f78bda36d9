"""The front doors (gRPC, and the OpenAI HTTP API beside it) of a running Serve application:
`kvfleet up` runs one in its own process, and `kvfleet router` adds more. Each process holds
its own copy of the routing policy (Serve builds the request router per process), fed with the
replicas' KV events through Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from ray import serve

from cluster.app import DEPLOYMENTS, deployed_config
from cluster.disaggregated_backend import DisaggregatedBackend
from cluster.http_options import HTTPOptions
from cluster.serve_backend import ServeBackend
from router.auth import TokenAuth
from router.disaggregation import DisaggregationPolicy
from router.front_doors import FrontDoors, open_front_doors
from router.tls import TLSConfig
from worker.config import EngineConfig
from worker.request_builder import RequestBuilder

T = TypeVar("T")


NO_HTTP = HTTPOptions(port=0, chat_template=None, request_timeout_s=None)


@dataclass
class FrontDoor:
    """Both front doors over one ServeBackend."""

    doors: FrontDoors
    backend: ServeBackend | DisaggregatedBackend

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.doors.stop(grace_s)
        await self.backend.close()


async def start_front_door(
    app_name: str,
    host: str = "127.0.0.1",
    port: int = 50051,
    max_queued_requests: int = 1024,
    http: HTTPOptions = NO_HTTP,
    tls: TLSConfig | None = None,
    auth: TokenAuth | None = None,
) -> FrontDoor:
    """Serve the application on host:port (gRPC) and host:http.port (HTTP): its engine
    deployment, or its prefill and decode pools when it was deployed disaggregated. The engine
    configuration comes from a replica, so the front door validates and hashes exactly as the
    replicas do. Call on the event loop that will serve the calls, in a process connected to
    the Ray cluster."""
    cluster = await asyncio.to_thread(deployed_config, app_name)
    disaggregated = cluster is not None and cluster.disaggregated
    pools = ("prefill", "decode") if disaggregated else ("colocated",)
    backends = []
    for pool in pools:
        handle = serve.get_deployment_handle(DEPLOYMENTS[pool], app_name=app_name)
        engine: EngineConfig = await handle.engine_config.remote()
        requests = RequestBuilder.for_config(engine)
        backends.append(
            ServeBackend(handle, requests, engine.model.name, app_name, max_queued_requests)
        )
    backend: ServeBackend | DisaggregatedBackend = backends[0]
    if cluster is not None and cluster.disaggregated:
        settings = cluster.disaggregation
        policy = DisaggregationPolicy(settings.local_prefill_tokens, settings.kv_lease_s)
        backend = DisaggregatedBackend(backends[0], backends[1], policy)
    template = http.chat_template_for(engine.model) if http.port else None
    await backend.start()
    try:
        doors = await open_front_doors(
            backend, host, port, http.http_port, template, http.config, tls, auth
        )
    except BaseException:
        await backend.close()
        raise
    return FrontDoor(doors, backend)


class FrontDoorThread:
    """A front door serving from an event loop on a thread of its own, for synchronous callers
    (tests, benchmarks) in a process connected to the Ray cluster."""

    def __init__(
        self,
        app_name: str,
        host: str = "127.0.0.1",
        port: int = 50051,
        max_queued_requests: int = 1024,
        http: HTTPOptions = NO_HTTP,
    ) -> None:
        self.target = f"{host}:{port}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.front_door = self.run(
            start_front_door(app_name, host, port, max_queued_requests, http)
        )

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        """Run ``coro`` on the router's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout_s)

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving, letting streams in flight finish for up to ``grace_s``."""
        self.run(self.front_door.stop(grace_s=grace_s), timeout_s=grace_s + 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
