"""The gRPC front door: the kvfleet.v1.Generation service over a pluggable Backend."""

from router.server.app import serve, stop
from router.server.backend import Backend, GenerationRequest, LocalBackend, ModelInfo
from router.server.service import GenerationService

__all__ = [
    "Backend",
    "GenerationRequest",
    "GenerationService",
    "LocalBackend",
    "ModelInfo",
    "serve",
    "stop",
]
