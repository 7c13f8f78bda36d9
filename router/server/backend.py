"""What the gRPC layer serves requests with: one in-process engine today, Ray Serve replicas
chosen by the routing policy later."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing
from dataclasses import dataclass
from typing import cast

from router.policy import NoReplicaError, OverloadedError
from worker.async_engine import AsyncEngine
from worker.errors import (
    DuplicateRequestError,
    InvalidRequestError,
)
from worker.outputs import RequestOutput
from worker.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One validated-at-the-edge request as the gRPC layer hands it to a backend."""

    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    cache_salt: str | None = None
    model: str = ""  # empty: the only served model


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A served model as ListModels reports it."""

    name: str
    max_model_len: int
    vocab_size: int


class Backend(abc.ABC):
    """Serves generation requests. Errors are kvfleet's own exception types (InvalidRequestError,
    OverloadedError, NoReplicaError, EngineDeadError, ...) so that the gRPC layer can map each to
    one status code. Closing a ``generate`` stream before its final output aborts the request."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Validate (raising before anything is queued), then yield deltas until the final one."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> bool:
        """Abort a running request; False if no such request is running."""

    @abc.abstractmethod
    async def tokenize(self, text: str, model: str = "") -> list[int]: ...

    @abc.abstractmethod
    async def models(self) -> list[ModelInfo]: ...

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether a request sent now can be served."""


def check_model(model: str, served: str) -> None:
    """An empty name means the only served model; any other must be it."""
    if model and model != served:
        raise InvalidRequestError("model", f"{model!r} is not served (try {served!r})")


def check_admission(request_id: str, running: Collection[str], max_queued: int) -> None:
    """Refuse a request id already running here, or one more request than ``max_queued``."""
    if request_id in running:
        raise DuplicateRequestError(request_id)
    if len(running) >= max_queued:
        raise OverloadedError(f"{len(running)} requests in flight, at most {max_queued}")


class LocalBackend(Backend):
    """One AsyncEngine in this process. At most ``max_queued_requests`` requests are admitted and
    unfinished at once; beyond that ``generate`` raises OverloadedError instead of letting the
    engine's queue (and every request's latency) grow without bound."""

    def __init__(
        self, engine: AsyncEngine, model_name: str, max_queued_requests: int = 1024
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.max_queued_requests = max_queued_requests
        self._running: set[str] = set()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        check_model(request.model, self.model_name)
        if not self.engine.alive:  # a dead engine is never restarted in place
            raise NoReplicaError("the engine stopped after a failure")
        check_admission(request.request_id, self._running, self.max_queued_requests)
        self._running.add(request.request_id)
        # AsyncEngine.generate is an async generator; typed as an iterator, it hides aclose.
        stream = cast(
            AsyncGenerator[RequestOutput, None],
            self.engine.generate(
                request.prompt, request.params, request.request_id, request.cache_salt
            ),
        )
        try:
            async with aclosing(stream):  # closing early aborts the engine request
                async for output in stream:
                    yield output
        finally:
            self._running.discard(request.request_id)

    async def abort(self, request_id: str) -> bool:
        if request_id not in self._running:
            return False
        self.engine.abort(request_id)
        return True

    async def tokenize(self, text: str, model: str = "") -> list[int]:
        check_model(model, self.model_name)
        return self.engine.engine.tokenizer.encode(text)

    async def models(self) -> list[ModelInfo]:
        engine = self.engine.engine
        return [ModelInfo(self.model_name, engine.max_model_len, engine.model_config.vocab_size)]

    def healthy(self) -> bool:
        return self.engine.alive
