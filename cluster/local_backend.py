"""One engine in this process behind the gRPC API: `kvfleet serve`, and the tests of the front
door. No Ray."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import cast

from router.backend import Backend
from worker.async_engine import AsyncEngine
from worker.engine import Engine
from worker.errors import EngineDeadError, NoReplicaError, OverloadedError
from worker.load_report import LoadReport
from worker.messages import GenerationRequest, RequestOutput


class LocalBackend(Backend):
    """One AsyncEngine. At most ``max_queued_requests`` requests are unfinished at once; beyond
    that ``generate`` raises OverloadedError instead of letting the engine's queue (and every
    request's latency) grow without bound. The engine refuses a request id already running."""

    def __init__(
        self, engine: AsyncEngine, model_name: str, max_queued_requests: int = 1024
    ) -> None:
        self.engine = engine
        self.requests = engine.requests
        self.model_name = model_name
        self.max_queued_requests = max_queued_requests

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        if not self.engine.alive:  # a dead engine is never restarted in place
            raise NoReplicaError("the engine stopped after a failure")
        running = self.engine.num_running
        if running >= self.max_queued_requests:
            raise OverloadedError(
                f"{running} requests in flight, at most {self.max_queued_requests}"
            )
        # AsyncEngine.generate is an async generator; typed as an iterator, it hides aclose.
        stream = cast(AsyncGenerator[RequestOutput, None], self.engine.generate(request))
        async with aclosing(stream):  # closing early aborts the engine request
            async for output in stream:
                yield output

    async def abort(self, request_id: str) -> bool:
        return self.engine.abort(request_id)

    def healthy(self) -> bool:
        return self.engine.alive

    async def load_reports(self) -> dict[str, LoadReport]:
        """The one engine's, as engine "0" (vLLM's label for a single engine)."""
        try:
            return {"0": await self.engine.call(Engine.load_report)}
        except EngineDeadError:  # a dead engine has no load to report
            return {}
