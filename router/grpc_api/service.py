"""The kvfleet.v1.Generation servicer: proto in, validated request to a Backend, deltas out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

import grpc

from protos.kvfleet.v1 import generation_pb2 as pb
from protos.kvfleet.v1 import generation_pb2_grpc as pb_grpc
from router.grpc_api.backend import Backend
from router.grpc_api.convert import generate_response, prompt_of, request_id_of, sampling_params
from router.grpc_api.status import abort_with
from worker.errors import DeadlineExceededError, InvalidRequestError
from worker.messages import GenerationRequest


class GenerationService(pb_grpc.GenerationServicer):
    """Serves Generation over one Backend. The event loop only checks sizes and moves bytes:
    tokenizing runs on a small thread pool (the tokenizer releases the GIL), so one huge prompt
    never stalls other streams or the health check. Errors reach the client through status.py's
    mapping; a call that ends early (deadline, cancellation, server stop) closes the backend
    stream, which aborts the request and frees its KV blocks."""

    def __init__(self, backend: Backend, tokenizer_threads: int = 2) -> None:
        self.backend = backend
        self._tokenizers = ThreadPoolExecutor(tokenizer_threads, "kvfleet-tokenize")

    def close(self) -> None:
        self._tokenizers.shutdown(wait=False, cancel_futures=True)

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        remaining = context.time_remaining()
        # gRPC cancels the handler once the deadline passes too; timing out here as well
        # aborts the engine request at the deadline itself and reports DEADLINE_EXCEEDED. The
        # timeout covers only waits, never a yield (a cancel scope held across a yield would
        # fire inside gRPC's own write).
        deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
        try:
            async with asyncio.timeout_at(deadline):
                validated = await self._validate(request)
            stream = self.backend.generate(validated)  # refuses at once when not healthy
            async with aclosing(stream):
                while True:
                    async with asyncio.timeout_at(deadline):
                        output = await anext(stream, None)
                    if output is None:
                        return
                    yield generate_response(output)
        except TimeoutError:
            passed = DeadlineExceededError("the call's deadline passed; the request was aborted")
            await abort_with(context, passed)
        except Exception as exc:
            await abort_with(context, exc)

    async def Abort(
        self, request: pb.AbortRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortResponse:
        return pb.AbortResponse(found=await self.backend.abort(request.request_id))

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        try:
            self._check_model(request.model)
            builder = self.backend.requests
            if len(request.text) > builder.max_prompt_chars:
                raise InvalidRequestError(
                    "text", f"{len(request.text)} characters, at most {builder.max_prompt_chars}"
                )
            loop = asyncio.get_running_loop()
            ids = await loop.run_in_executor(
                self._tokenizers, builder.tokenizer.encode, request.text
            )
        except Exception as exc:
            await abort_with(context, exc)
        return pb.TokenizeResponse(token_ids=ids)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        builder = self.backend.requests
        model = pb.Model(
            name=self.backend.model_name,
            max_model_len=builder.max_model_len,
            vocab_size=builder.vocab_size,
        )
        return pb.ListModelsResponse(models=[model])

    async def _validate(self, request: pb.GenerateRequest) -> GenerationRequest:
        """Cheap checks on the loop first, so that an oversized request costs nothing; then the
        tokenizer and the rest of the validation on the thread pool."""
        self._check_model(request.model)
        builder = self.backend.requests
        request_id, prompt = request_id_of(request), prompt_of(request)
        cache_salt = request.cache_salt or None
        builder.check_sizes(request_id, prompt, cache_salt)
        params = sampling_params(request.sampling)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._tokenizers, builder.build, request_id, prompt, params, cache_salt
        )

    def _check_model(self, model: str) -> None:
        """An empty name means the only served model; any other must be it."""
        served = self.backend.model_name
        if model and model != served:
            raise InvalidRequestError("model", f"{model!r} is not served (try {served!r})")
