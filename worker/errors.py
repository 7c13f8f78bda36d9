"""Every error kvfleet raises on purpose, engine and router alike, under one base: the front
doors map each kind to one status code (router/grpc_api/status.py) and treat anything else as
a bug. Torch-free, so the router imports it."""

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


class NoReplicaError(KVFleetError):
    """Nothing can serve the request now: no replica is registered or running (UNAVAILABLE)."""


class OverloadedError(KVFleetError):
    """Every place the request could wait is full: a front door's queue cap, or every replica
    at its queue cap or short of KV blocks (RESOURCE_EXHAUSTED)."""


class DeadlineExceededError(KVFleetError):
    """The caller's deadline passed before the request finished; it was aborted."""


class UnknownReplicaError(KVFleetError, KeyError):
    """An event, snapshot or prediction named a replica the router's index was not told
    about."""
