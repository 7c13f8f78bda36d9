"""What both front doors (gRPC and HTTP) do to a request before a backend runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from router.backend import Backend
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
    one set of metrics counts both."""

    def __init__(self, backend: Backend, threads: int = 2) -> None:
        self.backend = backend
        self.metrics = ServingMetrics(backend.model_name, backend.metrics_collectors())
        self._pool = ThreadPoolExecutor(threads, "kvfleet-tokenize")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the tokenizer pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """The backend's stream, metered. Closing it closes the backend's (which aborts)."""
        return self.metrics.metered(self.backend.generate(request))

    async def validate(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        cache_salt: str | None,
    ) -> GenerationRequest:
        builder = self.backend.requests
        builder.check_sizes(request_id, prompt, cache_salt)
        return await self.run(builder.build, request_id, prompt, params, cache_salt)

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
