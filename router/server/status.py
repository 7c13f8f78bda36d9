"""The one mapping from kvfleet's exceptions to gRPC status codes.

    InvalidRequestError        -> INVALID_ARGUMENT (details start with the proto field's path,
                                  which also comes back in the ``kvfleet-field`` trailer)
    DuplicateRequestError      -> ALREADY_EXISTS   (a request id that is still running)
    OverloadedError            -> RESOURCE_EXHAUSTED (the backend's queue is full)
    NoReplicaError, EngineDeadError, WorkerFailedError -> UNAVAILABLE
    TimeoutError               -> DEADLINE_EXCEEDED (the call's deadline passed; request aborted)

A call the client cancels ends as CANCELLED without the server sending anything: gRPC cancels the
handler, and unwinding it aborts the engine request. Anything else is a bug and propagates
(UNKNOWN), never swallowed.
"""

from __future__ import annotations

import grpc

from router.policy import NoReplicaError, OverloadedError
from worker.errors import (
    DuplicateRequestError,
    EngineDeadError,
    InvalidRequestError,
    WorkerFailedError,
)

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

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    # Order matters: DuplicateRequestError is an InvalidRequestError.
    (DuplicateRequestError, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NoReplicaError, grpc.StatusCode.UNAVAILABLE),
    (EngineDeadError, grpc.StatusCode.UNAVAILABLE),
    (WorkerFailedError, grpc.StatusCode.UNAVAILABLE),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def proto_field(engine_field: str) -> str:
    return _PROTO_FIELDS.get(engine_field, engine_field)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code for an exception kvfleet raises on purpose; None for anything else."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return None


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with ``exc``'s status code; re-raise ``exc`` if it has none."""
    code = status_for(exc)
    if code is None:
        raise exc
    if isinstance(exc, InvalidRequestError):
        field = proto_field(exc.field)
        message = str(exc).removeprefix(f"{exc.field}: ")
        await context.abort(code, f"{field}: {message}", ((FIELD_TRAILER, field),))
    if isinstance(exc, TimeoutError):
        await context.abort(code, "the call's deadline passed; the request was aborted")
    await context.abort(code, str(exc) or type(exc).__name__)
