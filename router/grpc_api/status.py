"""The one mapping from kvfleet's errors (worker/errors.py) to gRPC status codes.

    InvalidRequestError        -> INVALID_ARGUMENT (details start with the proto field's path,
                                  which also comes back in the ``kvfleet-field`` trailer)
    DuplicateRequestError      -> ALREADY_EXISTS   (a request id that is still running)
    OverloadedError            -> RESOURCE_EXHAUSTED (every queue it could wait in is full)
    NoReplicaError, EngineDeadError, WorkerFailedError -> UNAVAILABLE
    DeadlineExceededError      -> DEADLINE_EXCEEDED (the call's deadline passed; request aborted)
    anything else              -> INTERNAL, its cause logged, only its type told

A call the client cancels ends as CANCELLED without the server sending anything: gRPC cancels the
handler, and unwinding it aborts the engine request. Never a traceback to the client.
"""

from __future__ import annotations

import logging

import grpc

from worker.errors import (
    DeadlineExceededError,
    DuplicateRequestError,
    EngineDeadError,
    InvalidRequestError,
    KVFleetError,
    NoReplicaError,
    OverloadedError,
    WorkerFailedError,
)

_log = logging.getLogger(__name__)

FIELD_TRAILER = "kvfleet-field"

# Engine parameter names -> where the client set them in kvfleet.v1.GenerateRequest.
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "max_tokens",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "logprobs",
    "include_stop_str_in_output",
)
_PROTO_FIELDS = {name: f"sampling.{name}" for name in _SAMPLING_FIELDS} | {
    "prompt_token_ids": "token_ids",
}

_CODES: tuple[tuple[type[KVFleetError], grpc.StatusCode], ...] = (
    # Order matters: DuplicateRequestError is an InvalidRequestError.
    (DuplicateRequestError, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NoReplicaError, grpc.StatusCode.UNAVAILABLE),
    (EngineDeadError, grpc.StatusCode.UNAVAILABLE),
    (WorkerFailedError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def proto_field(engine_field: str) -> str:
    return _PROTO_FIELDS.get(engine_field, engine_field)


def status_for(exc: Exception) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """End the call with ``exc``'s status code (``context.abort`` raises). INTERNAL is a bug,
    not the client's doing: its cause is logged here, and the client is told only its kind."""
    code = status_for(exc)
    if isinstance(exc, InvalidRequestError):
        field = proto_field(exc.field)
        message = str(exc).removeprefix(f"{exc.field}: ")
        await context.abort(code, f"{field}: {message}", ((FIELD_TRAILER, field),))
    if code == grpc.StatusCode.INTERNAL:
        _log.error("internal error serving a call", exc_info=exc)
        await context.abort(code, f"internal error ({type(exc).__name__})")
    await context.abort(code, str(exc) or type(exc).__name__)
