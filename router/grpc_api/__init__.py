"""The gRPC front door: the kvfleet.v1.Generation service over a pluggable Backend."""

from router.backend import Backend
from router.grpc_api.app import serve, stop
from router.grpc_api.service import GenerationService

__all__ = ["Backend", "GenerationService", "serve", "stop"]
