"""The kvfleet.v1.Generation servicer: proto in, validated request to a Backend, deltas out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from protos.kvfleet.v1 import generation_pb2 as pb
from protos.kvfleet.v1 import generation_pb2_grpc as pb_grpc
from router.auth import Client
from router.backend import Backend
from router.grpc_api.convert import generate_response, prompt_of, request_id_of, sampling_params
from router.grpc_api.status import abort_with
from router.intake import Intake
from worker.errors import DeadlineExceededError
from worker.messages import GenerationRequest


class GenerationService(pb_grpc.GenerationServicer):
    """Serves Generation over one Backend, validating through an Intake (shared with the HTTP
    front door). Errors reach the client through status.py's mapping; a call that ends early
    (deadline, cancellation, server stop) closes the backend stream, which aborts the request
    and frees its KV blocks."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.backend: Backend = intake.backend

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
            client = self.intake.client_of(dict(context.invocation_metadata()).get("authorization"))
            async with asyncio.timeout_at(deadline):
                validated = await self._validate(request, client, remaining)
            stream = self.intake.generate(validated, client)  # refuses when not healthy
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
            self.intake.check_model(request.model)
            ids = await self.intake.encode(request.text)
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

    async def _validate(
        self, request: pb.GenerateRequest, client: Client | None, timeout_s: float | None
    ) -> GenerationRequest:
        self.intake.check_model(request.model)
        prompt, params = prompt_of(request), sampling_params(request.sampling)
        cache_salt = request.cache_salt or None
        priority = request.priority if request.HasField("priority") else None
        return await self.intake.validate(
            request_id_of(request), prompt, params, cache_salt, priority, client, timeout_s
        )
