"""A Backend over Ray Serve replicas, each request sent where the routing policy chooses.

The front door validates and tokenizes with the replicas' own RequestBuilder, so bad requests
never leave this process and every replica receives token ids; the Serve handle then routes the
call through the deployment's RequestRouter (cluster/request_router.py), which reads those ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator
from typing import cast

import ray.exceptions
from prometheus_client.registry import Collector
from ray import serve
from ray.serve.exceptions import RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from cluster import live_routers
from cluster.replica import Pinned, replica_ids
from cluster.router_metrics import RouterCollector
from router.backend import Backend
from router.failover import with_failover
from worker.errors import (
    DuplicateRequestError,
    KVFleetError,
    NoReplicaError,
    OverloadedError,
    WorkerFailedError,
)
from worker.messages import GenerationRequest, RequestOutput
from worker.request_builder import RequestBuilder

_log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class _InFlight:
    response: DeploymentResponseGenerator
    aborted: bool = False


class ServeBackend(Backend):
    """Requests go through ``handle`` (the engine deployment of ``app_name``). At most
    ``max_queued_requests`` are unfinished at once (RESOURCE_EXHAUSTED beyond). Health is the
    deployment's running-replica count, polled from Serve every ``status_period_s`` by
    ``start()``; with none running, requests fail fast with UNAVAILABLE instead of waiting."""

    def __init__(
        self,
        handle: DeploymentHandle,
        requests: RequestBuilder,
        model_name: str,
        app_name: str,
        max_queued_requests: int = 1024,
        status_period_s: float = 1.0,
    ) -> None:
        self.handle = handle.options(stream=True)
        self._calls = handle  # unary calls: aborts on every replica
        self.requests = requests
        self.model_name = model_name
        self.app_name = app_name
        self.max_queued_requests = max_queued_requests
        self.status_period_s = status_period_s
        self.num_running_replicas = 0
        self._running: dict[str, _InFlight] = {}
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the replica count once, then keep it current in the background."""
        await self._read_status()
        self._poller = asyncio.create_task(self._poll_status())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)

    def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """The request's stream; if its replica dies, it carries on on another one
        (router/failover.py)."""
        return with_failover(
            self._generate_once, request, self.requests.tokenizer, on_failure=self._replica_lost
        )

    def _replica_lost(self, request: GenerationRequest) -> None:
        router = live_routers.LIVE.get(live_routers.key(self.app_name, self.handle.deployment_name))
        if router is not None:
            router.replica_failed(request.request_id)

    async def _generate_once(
        self, request: GenerationRequest
    ) -> AsyncGenerator[RequestOutput, None]:
        if not self.healthy():
            raise NoReplicaError(f"no replica of {self.app_name!r} is running")
        if request.request_id in self._running:
            raise DuplicateRequestError(request.request_id)
        if len(self._running) >= self.max_queued_requests:
            raise OverloadedError(
                f"{len(self._running)} requests in flight, at most {self.max_queued_requests}"
            )
        response = cast(DeploymentResponseGenerator, self.handle.generate.remote(request))
        call = _InFlight(response)
        self._running[request.request_id] = call
        finished, num_tokens = False, 0
        try:
            async for output in call.response:
                finished = output.finished
                num_tokens += len(output.token_ids)
                yield output
        except RequestCancelledError:
            if not call.aborted:
                raise
            finished = True  # ended by Abort: say so, as the engine would have
            yield _aborted(request.request_id, len(request.prompt_token_ids), num_tokens)
        except ray.exceptions.RayError as exc:
            raise _replica_error(exc) from exc
        finally:
            del self._running[request.request_id]
            if not finished:  # the caller went away or a deadline passed: stop the replica
                call.response.cancel()

    async def abort(self, request_id: str) -> bool:
        """Abort a request streamed through this front door, or else one streamed through
        another: every replica is asked, and the one running it ends it."""
        call = self._running.get(request_id)
        if call is None:
            return await self._abort_elsewhere(request_id)
        call.aborted = True
        call.response.cancel()
        return True

    async def _abort_elsewhere(self, request_id: str) -> bool:
        deployment = self.handle.deployment_name
        replicas = await asyncio.to_thread(replica_ids, self.app_name, deployment)
        calls = [self._calls.abort.remote(Pinned(r), request_id) for r in replicas]
        found = await asyncio.gather(*calls, return_exceptions=True)
        for replica, result in zip(replicas, found, strict=True):
            if isinstance(result, BaseException):  # a replica going away, say
                _log.warning("abort of %s on replica %s failed: %s", request_id, replica, result)
        return any(result is True for result in found)

    def healthy(self) -> bool:
        return self.num_running_replicas > 0

    def metrics_collectors(self) -> list[Collector]:
        deployment = self.handle.deployment_name
        return [RouterCollector(self.app_name, deployment, lambda: len(self._running))]

    async def _poll_status(self) -> None:
        while True:
            await asyncio.sleep(self.status_period_s)
            try:
                await self._read_status()
            except Exception:  # the controller restarting, say: keep the last count
                _log.warning("could not read Serve status", exc_info=True)

    async def _read_status(self) -> None:
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self.app_name)
        deployment = app.deployments.get(self.handle.deployment_name) if app else None
        states = deployment.replica_states if deployment else {}
        self.num_running_replicas = sum(n for s, n in states.items() if s == "RUNNING")


def _replica_error(exc: ray.exceptions.RayError) -> KVFleetError:
    """kvfleet's own error raised in the replica, or WorkerFailedError for a replica that died
    or failed otherwise (UNAVAILABLE)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, KVFleetError):
        return cause
    # Ray's message names actors, pids and nodes: those stay in the log, not in the answer.
    _log.warning("a replica failed during a request: %s", exc)
    return WorkerFailedError("the replica serving this request failed; retry the request")


def _aborted(request_id: str, num_prompt_tokens: int, num_output_tokens: int) -> RequestOutput:
    return RequestOutput(
        request_id,
        [],
        "",
        None,
        finished=True,
        finish_reason="abort",
        num_prompt_tokens=num_prompt_tokens,
        num_output_tokens=num_output_tokens,
    )
