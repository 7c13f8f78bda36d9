"""What both front doors (gRPC and HTTP) do to a request before a backend runs it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from typing import TypeVar

from router.auth import PRIORITY_RANGE, Client, TokenAuth
from router.backend import Backend
from router.client_limits import ClientLimits
from router.metrics import ServingMetrics
from worker.errors import InvalidRequestError
from worker.messages import GenerationRequest, RequestOutput
from worker.sampling_params import SamplingParams

T = TypeVar("T")


class Intake:
    """Validation shared by the front doors of one backend, with the backend's own
    RequestBuilder, so a request is refused at the edge with the engine's message. The event
    loop only runs the checks that cost nothing; tokenizing (and template rendering) runs on a
    small thread pool (the tokenizer releases the GIL), so one huge prompt never stalls other
    streams or the health checks. Every stream either door runs goes through ``generate``, so
    one set of metrics, and one set of per-client limits (with ``auth``), counts both."""

    def __init__(self, backend: Backend, auth: TokenAuth | None = None, threads: int = 2) -> None:
        self.backend = backend
        self.auth = auth
        self.limits = ClientLimits()
        self.metrics = ServingMetrics(backend.model_name, backend.metrics_collectors())
        self._pool = ThreadPoolExecutor(threads, "kvfleet-tokenize")

    def client_of(self, authorization: str | None) -> Client | None:
        """The calling client, by its bearer token; None without auth (the doors' own check
        has refused unknown tokens already)."""
        return None if self.auth is None else self.auth.client_for(authorization)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the tokenizer pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def generate(
        self, request: GenerationRequest, client: Client | None = None
    ) -> AsyncGenerator[RequestOutput, None]:
        """The backend's stream, metered, counted against the client's limits from its first
        item to its end (that first wait raises OverloadedError when the client is over
        them). Closing it closes the backend's (which aborts)."""
        if client is None:
            return self.metrics.metered(self.backend.generate(request))
        return self._counted(client, request)

    async def _counted(
        self, client: Client, request: GenerationRequest
    ) -> AsyncGenerator[RequestOutput, None]:
        self.limits.acquire(client)  # here, not at the call: a stream never started holds none
        try:
            stream = self.metrics.metered(self.backend.generate(request))
            async with aclosing(stream):
                async for output in stream:
                    yield output
        finally:
            self.limits.release(client)

    async def validate(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        cache_salt: str | None,
        priority: int | None = None,
        client: Client | None = None,
        timeout_s: float | None = None,
    ) -> GenerationRequest:
        """A request the backend can run. ``priority`` None takes the client's default; a
        client may ask to be less important than its default, never more. With
        ``timeout_s``, the replica refuses the request at once if its queue would keep it
        past that."""
        builder = self.backend.requests
        builder.check_sizes(request_id, prompt, cache_salt)
        chosen = _priority(priority, client)
        request = await self.run(builder.build, request_id, prompt, params, cache_salt)
        deadline = None if timeout_s is None else time.time() + timeout_s
        return dataclasses.replace(request, priority=chosen, deadline=deadline)

    async def encode(self, text: str) -> list[int]:
        builder = self.backend.requests
        if len(text) > builder.max_prompt_chars:
            raise InvalidRequestError(
                "text", f"{len(text)} characters, at most {builder.max_prompt_chars}"
            )
        return await self.run(builder.tokenizer.encode, text)

    def check_model(self, model: str) -> None:
        """An empty name means the only served model; any other must be it."""
        served = self.backend.model_name
        if model and model != served:
            raise InvalidRequestError("model", f"{model!r} is not served (try {served!r})")


def _priority(asked: int | None, client: Client | None) -> int:
    floor = 0 if client is None else client.priority
    if asked is None:
        return floor
    low, high = PRIORITY_RANGE
    if not low <= asked <= high:
        raise InvalidRequestError("priority", f"must be in [{low}, {high}], got {asked}")
    if client is not None and asked < floor:
        raise InvalidRequestError(
            "priority",
            f"{asked} is more important than client {client.name!r} may ask for "
            f"(lowest value allowed: {floor})",
        )
    return asked
