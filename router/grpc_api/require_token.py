"""Bearer tokens on the gRPC front door (router/auth.py holds the tokens)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from router.auth import OPEN_GRPC_SERVICES, TokenAuth
from router.grpc_api.guard import guarded


class RequireToken(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for a call without an accepted token (health checks excepted)."""

    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if (
            handler is None
            or handler.request_streaming
            or method.lstrip("/").startswith(OPEN_GRPC_SERVICES)
        ):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self.auth.allows(metadata.get("authorization")):
            return handler
        return guarded(handler, _refuse)


async def _refuse(request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, "a valid 'authorization: Bearer TOKEN' is required"
    )
