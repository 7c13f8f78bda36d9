"""Checks a server interceptor runs before a method: the one way the front door's interceptors
(router/grpc_api/undecodable.py, router/auth.py) wrap a unary-request handler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# Runs before the method with its request; refuses the call by aborting the context.
Guard = Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]


def guarded(
    handler: grpc.RpcMethodHandler,
    guard: Guard,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` (a unary request, streamed or unary response) with ``guard`` first, and its
    request deserializer replaced when one is given."""
    deserialize = request_deserializer or handler.request_deserializer
    serialize = handler.response_serializer
    if handler.response_streaming:
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await guard(request, context)
            async for response in inner_stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(stream, deserialize, serialize)
    inner_unary = handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await guard(request, context)
        return await inner_unary(request, context)

    return grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
