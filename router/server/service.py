"""The kvfleet.v1.Generation servicer: proto in, Backend calls, proto deltas out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from protos.kvfleet.v1 import generation_pb2 as pb
from protos.kvfleet.v1 import generation_pb2_grpc as pb_grpc
from router.policy import NoReplicaError
from router.server.backend import Backend
from router.server.convert import generate_response, generation_request
from router.server.status import abort_with
from worker.errors import KVFleetError


class GenerationService(pb_grpc.GenerationServicer):
    """Serves Generation over one Backend. Errors reach the client through status.py's mapping;
    a call that ends early (deadline, cancellation, server stop) closes the backend stream, which
    aborts the request and frees its KV blocks."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            if not self.backend.healthy():
                raise NoReplicaError("no healthy backend")
            stream = self.backend.generate(generation_request(request))
            remaining = context.time_remaining()
            # gRPC cancels the handler once the deadline passes too; timing out here as well
            # aborts the engine request at the deadline itself and reports DEADLINE_EXCEEDED.
            # The timeout covers only the wait for output, never a yield (a cancel scope held
            # across a yield would fire inside gRPC's own write).
            deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
            async with aclosing(stream):
                while True:
                    async with asyncio.timeout_at(deadline):
                        output = await anext(stream, None)
                    if output is None:
                        return
                    yield generate_response(output)
        except (KVFleetError, RuntimeError, TimeoutError) as exc:
            await abort_with(context, exc)

    async def Abort(
        self, request: pb.AbortRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortResponse:
        return pb.AbortResponse(found=await self.backend.abort(request.request_id))

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        try:
            ids = await self.backend.tokenize(request.text, request.model)
        except KVFleetError as exc:
            await abort_with(context, exc)
        return pb.TokenizeResponse(token_ids=ids)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = await self.backend.models()
        return pb.ListModelsResponse(
            models=[
                pb.Model(name=m.name, max_model_len=m.max_model_len, vocab_size=m.vocab_size)
                for m in models
            ]
        )
