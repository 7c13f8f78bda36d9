"""Start and stop the gRPC server: Generation, grpc.health.v1 and server reflection."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from protos.kvfleet.v1 import generation_pb2 as pb
from router.auth import TokenAuth
from router.backend import Backend
from router.grpc_api.require_token import RequireToken
from router.grpc_api.service import GenerationService, pb_grpc
from router.grpc_api.undecodable import RefuseUndecodable
from router.intake import Intake
from router.tls import TLSConfig

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generation"].full_name
HEALTH_POLL_S = 1.0

# Health trackers run until their server stops; held here so they are not garbage-collected.
_trackers: set[asyncio.Task[None]] = set()


async def serve(
    intake: Intake,
    host: str = "127.0.0.1",
    port: int = 50051,
    tls: TLSConfig | None = None,
    auth: TokenAuth | None = None,
) -> grpc.aio.Server:
    """Start serving ``intake``'s backend on host:port (over TLS when ``tls`` is given); stop
    with ``stop``. Must run on the event loop that will serve the calls. The intake is the
    caller's (router/front_doors.py shares it with the HTTP front door) and outlives the
    server."""
    backend = intake.backend
    interceptors: list[grpc.aio.ServerInterceptor] = [RefuseUndecodable()]
    if auth is not None:
        interceptors.insert(0, RequireToken(auth))
    server = grpc.aio.server(interceptors=interceptors)
    service = GenerationService(intake)
    pb_grpc.add_GenerationServicer_to_server(service, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if tls is None:
        server.add_insecure_port(f"{host}:{port}")
    else:
        server.add_secure_port(f"{host}:{port}", tls.grpc_credentials())
    await server.start()
    await _set_health(health, backend.healthy())
    task = asyncio.create_task(_track_health(server, backend, health))
    _trackers.add(task)
    task.add_done_callback(_trackers.discard)
    return server


async def stop(server: grpc.aio.Server, grace_s: float = 5.0) -> None:
    """Refuse new calls, give running ones ``grace_s`` to finish, then cancel them (which aborts
    their engine requests). The backend is the caller's to shut down afterwards."""
    await server.stop(grace_s)


async def _track_health(
    server: grpc.aio.Server, backend: Backend, health: health_aio.HealthServicer
) -> None:
    # wait_for_termination returns True when it timed out, i.e. the server is still up.
    while await server.wait_for_termination(timeout=HEALTH_POLL_S):
        await _set_health(health, backend.healthy())


async def _set_health(health: health_aio.HealthServicer, healthy: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if healthy
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):  # "" is the whole server, as probes ask by default
        await health.set(name, status)
