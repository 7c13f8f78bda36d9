"""Exceptions raised at the engine's boundaries; the gRPC layer maps each to one status code."""

from __future__ import annotations


class KVFleetError(Exception):
    """Base of every error kvfleet raises on purpose."""


class InvalidRequestError(KVFleetError, ValueError):
    """A request the engine will not run; ``field`` names the offending parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[InvalidRequestError], tuple[str, str]]:
        # Pickled across processes (a Serve replica to the router) with both arguments.
        return InvalidRequestError, (self.field, self.message)


class DuplicateRequestError(InvalidRequestError):
    """A request id that is already in flight."""

    def __init__(self, request_id: str) -> None:
        super().__init__("request_id", f"request {request_id!r} is already running")
        self.request_id = request_id

    def __reduce__(self) -> tuple[type[DuplicateRequestError], tuple[str]]:  # type: ignore[override]
        return DuplicateRequestError, (self.request_id,)


class ModelLoadError(KVFleetError):
    """A model directory that cannot be served: unsupported, missing, truncated or mismatched."""


class WorkerFailedError(KVFleetError):
    """A rank of the replica died or failed; the replica cannot serve until it is rebuilt."""


class EngineDeadError(KVFleetError):
    """The engine stopped after an internal failure; in-flight requests are failed with this."""
