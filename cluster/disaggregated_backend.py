"""The orchestration of disaggregated serving, in the front door, behind the same Generate:

    prompt --plan--> prefilled where it decodes (few tokens uncached there)
       \\--> prefill pool (routed by prefix over its index): run the prompt, keep its blocks
             under a lease, return a KVHandle
           --> decode pool (routed by its own policy): pull the blocks it lacks, recompute the
               last prompt token, stream; it releases the lease once it has pulled
    the client sees one ordinary stream, whose final message names both replicas

A prefill that fails (its replica died, the pool is overloaded or gone) costs the request a
local prefill on the decode replica, never an error; a client that goes away cancels whichever
stage runs, and the engines free what it held.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

from prometheus_client.registry import Collector

from cluster import live_routers
from cluster.serve_backend import ServeBackend
from router.backend import Backend
from router.disaggregation import DisaggregationPolicy
from worker.errors import KVFleetError
from worker.kv_transfer import KVHandle
from worker.messages import GenerationRequest, RequestOutput

_log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class DisaggregationCounts:
    """What this front door did with each request (cumulative)."""

    remote: int = 0  # prefilled by the prefill pool
    local: int = 0  # prefilled by the decode replica: few tokens uncached there
    fallback: int = 0  # the prefill failed: prefilled by the decode replica instead


class DisaggregatedBackend(Backend):
    """A Backend over a prefill and a decode pool (two ServeBackends of one application)."""

    def __init__(
        self, prefill: ServeBackend, decode: ServeBackend, policy: DisaggregationPolicy
    ) -> None:
        self.prefill = prefill
        self.decode = decode
        self.policy = policy
        self.requests = decode.requests
        self.model_name = decode.model_name
        self.counts = DisaggregationCounts()

    async def start(self) -> None:
        await self.prefill.start()
        await self.decode.start()

    async def close(self) -> None:
        await self.prefill.close()
        await self.decode.close()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        source = None
        if self._remotely(request):
            source, final = await self._prefill(request)
            if final is not None and final.finish_reason == "abort":  # Abort reached it there
                yield final
                return
        stream = self.decode.generate(dataclasses.replace(request, kv_source=source))
        async with aclosing(stream):
            async for output in stream:
                if output.finished and source is not None:
                    output = dataclasses.replace(output, prefilled_by=source.replica_id)
                yield output

    async def abort(self, request_id: str) -> bool:
        aborted = await self.prefill.abort(request_id)
        return await self.decode.abort(request_id) or aborted

    def healthy(self) -> bool:
        """The decode pool can serve alone: it prefills what the prefill pool cannot."""
        return self.decode.healthy()

    def metrics_collectors(self) -> list[Collector]:
        return [*self.prefill.metrics_collectors(), *self.decode.metrics_collectors()]

    def _remotely(self, request: GenerationRequest) -> bool:
        decode = self.decode
        router = live_routers.LIVE.get(
            live_routers.key(decode.app_name, decode.handle.deployment_name)
        )
        remote = self.prefill.healthy() and self.policy.plan(
            request.prompt_token_ids,
            request.cache_salt,
            router.policy if router is not None else None,
            time.monotonic(),
        )
        if not remote:
            self.counts.local += 1
        return remote

    async def _prefill(
        self, request: GenerationRequest
    ) -> tuple[KVHandle | None, RequestOutput | None]:
        """The prompt run on the prefill pool, its blocks leased: the handle (None if that
        failed) and the prefill's final output."""
        once = dataclasses.replace(
            request.params, max_tokens=1, stop=(), logprobs=None, n=1, beam_width=1,
            length_penalty=1.0, early_stopping=False,
        )  # fmt: skip
        leased = dataclasses.replace(request, params=once, kv_lease_s=self.policy.kv_lease_s)
        final = None
        try:
            async with aclosing(self.prefill.generate(leased)) as stream:
                async for output in stream:
                    final = output
        except KVFleetError as exc:
            _log.warning(
                "prefill of %s failed (%s); the decode pool prefills it", request.request_id, exc
            )
        handle = final.kv_handle if final is not None else None
        if handle is None:
            self.counts.fallback += 1
        else:
            self.counts.remote += 1
        return handle, final
