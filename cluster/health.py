"""`kvfleet health`: ask a front door's grpc.health.v1 service whether it serves."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(
    target: str, timeout_s: float = 5.0, credentials: grpc.ChannelCredentials | None = None
) -> str:
    """The overall service's status name (SERVING, NOT_SERVING, ...), or UNREACHABLE; over TLS
    with ``credentials``."""
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
