"""Requests whose bytes are not a valid message (invalid UTF-8 in a string field, say) answered
INVALID_ARGUMENT, as any other bad input, instead of gRPC's UNKNOWN for a deserializer that
raised: a server interceptor gives each method a deserializer that keeps the error, and a
behaviour that aborts with it before the method runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from router.grpc_api.guard import guarded


class _Undecodable:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class RefuseUndecodable(grpc.aio.ServerInterceptor):
    """For unary-request methods (every method the front door serves)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        deserialize = handler.request_deserializer

        def lenient(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError as exc:
                return _Undecodable(str(exc))

        return guarded(handler, _refuse, lenient)


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, _Undecodable):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid message: {request.reason}"
        )
