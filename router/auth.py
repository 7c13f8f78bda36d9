"""Bearer-token authentication on both front doors: with a token file, every call but the
health checks must carry ``authorization: Bearer TOKEN`` (gRPC metadata, or the HTTP header
the OpenAI SDK sends its api_key in) naming one of the file's tokens."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

OPEN_GRPC_SERVICES = ("grpc.health.v1.Health",)  # probes carry no token
OPEN_HTTP_PATHS = ("/health",)


class TokenAuth:
    """The accepted tokens; compared in constant time."""

    def __init__(self, tokens: list[str]) -> None:
        if not tokens:
            raise ValueError("no token to accept")
        self._tokens = [t.encode() for t in tokens]

    @classmethod
    def from_file(cls, path: Path) -> TokenAuth:
        """One token per line; blank lines and lines starting with # are skipped."""
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"auth tokens file {path}: {exc.strerror}") from None
        tokens = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not tokens:
            raise ValueError(f"auth tokens file {path}: no token in it")
        return cls(tokens)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``authorization`` value ("Bearer TOKEN") names an accepted token."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        return any([hmac.compare_digest(given, accepted) for accepted in self._tokens])


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
        if handler is None or method.lstrip("/").startswith(OPEN_GRPC_SERVICES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self.auth.allows(metadata.get("authorization")):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler like ``handler`` that aborts every call UNAUTHENTICATED."""

    async def refuse(context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, "a valid 'authorization: Bearer TOKEN' is required"
        )

    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.response_streaming:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await refuse(context)
            yield  # an async generator, as the handler it replaces

        return grpc.unary_stream_rpc_method_handler(stream, deserialize, serialize)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await refuse(context)

    return grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
