"""The one mapping from kvfleet's errors (worker/errors.py) to HTTP statuses and OpenAI's error
body, ``{"error": {"message", "type", "param", "code"}}``:

    InvalidRequestError      400 invalid_request_error, ``param`` the OpenAI field
      of field "model"       404 (a model this server does not serve), code model_not_found
    DuplicateRequestError    409 (an X-Request-Id still running), code duplicate_request_id
    OverloadedError          429 (every queue it could wait in is full)
    NoReplicaError, EngineDeadError, WorkerFailedError   503
    DeadlineExceededError    504 (the server's request timeout passed; the request was aborted)
    anything else            500, its cause logged, only its type told

Pydantic's validation errors and malformed JSON are 400s naming the field (or the body).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

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

# InvalidRequestError (and DuplicateRequestError, one of them) carry a field: http_error maps
# them itself.
_STATUSES: tuple[tuple[type[KVFleetError], int, str], ...] = (
    (OverloadedError, 429, "overloaded_error"),
    (NoReplicaError, 503, "unavailable_error"),
    (EngineDeadError, 503, "unavailable_error"),
    (WorkerFailedError, 503, "unavailable_error"),
    (DeadlineExceededError, 504, "timeout_error"),
)

# Engine parameter names -> the OpenAI field a client set.
_FIELDS = {"prompt_token_ids": "prompt", "request_id": "X-Request-Id"}
# Pydantic tags a union member's errors with the member's type: not part of the field's path.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


@dataclass(frozen=True)
class HTTPError:
    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def http_error(exc: Exception, prompt_field: str = "prompt") -> HTTPError:
    """``prompt_field``: what the engine's "prompt" was in the client's body ("messages" for
    chat)."""
    if isinstance(exc, HTTPErrorRaised):
        return exc.error
    if isinstance(exc, ValidationError):
        return _validation_error(exc)
    if isinstance(exc, DuplicateRequestError):
        return HTTPError(
            409, str(exc), "invalid_request_error", "X-Request-Id", "duplicate_request_id"
        )
    if isinstance(exc, InvalidRequestError):
        field = _FIELDS.get(exc.field, exc.field)
        if field == "prompt":
            field = prompt_field
        if exc.field == "model":
            return HTTPError(404, f"model {exc.message}", "invalid_request_error", "model",
                             "model_not_found")  # fmt: skip
        return HTTPError(400, f"{field}: {exc.message}", "invalid_request_error", field)
    for kind, status, name in _STATUSES:
        if isinstance(exc, kind):
            return HTTPError(status, str(exc) or type(exc).__name__, name)
    _log.error("internal error serving an HTTP request", exc_info=exc)
    return HTTPError(500, f"internal error ({type(exc).__name__})", "server_error")


class HTTPErrorRaised(Exception):
    """An error the HTTP layer itself decided (a body too large, bad JSON)."""

    def __init__(self, error: HTTPError) -> None:
        super().__init__(error.message)
        self.error = error


def _validation_error(exc: ValidationError) -> HTTPError:
    # The deepest error is the most specific (a union reports one error per member).
    first = max(exc.errors(), key=lambda e: len(e["loc"]))
    path = ""
    for part in first["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.split("[")[0] not in _TYPE_TAGS and "[" not in part:
            path += f".{part}" if path else part
    if first["type"] == "extra_forbidden":
        message = "unknown or unsupported field (kvfleet refuses what it does not implement)"
    else:
        message = first["msg"]
    param = path or None
    return HTTPError(400, f"{path}: {message}" if path else message, "invalid_request_error", param)
