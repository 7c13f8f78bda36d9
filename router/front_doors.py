"""Both front doors of one backend: gRPC, and the OpenAI HTTP API unless turned off, started
and stopped together over one Intake (so both validate, route, admit and cancel alike)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from router import grpc_api, http_api
from router.auth import TokenAuth
from router.backend import Backend
from router.http_api import ChatTemplate, HTTPConfig, HTTPServer
from router.intake import Intake
from router.tls import TLSConfig


@dataclass
class FrontDoors:
    intake: Intake
    grpc: grpc.aio.Server
    http: HTTPServer | None
    host: str
    grpc_port: int

    def describe(self) -> str:
        """Where they listen, for the commands to print."""
        served = f"gRPC on {self.host}:{self.grpc_port}"
        if self.http is not None:
            served += f", HTTP on {self.host}:{self.http.port}"
        return served

    async def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new calls, give running ones ``grace_s``, then cancel them (which aborts
        their requests). The backend is the caller's to close afterwards."""
        if self.http is not None:
            await self.http.stop(grace_s)
        await grpc_api.stop(self.grpc, grace_s)
        self.intake.close()


async def open_front_doors(
    backend: Backend,
    host: str = "127.0.0.1",
    grpc_port: int = 50051,
    http_port: int | None = 8000,
    chat_template: ChatTemplate | None = None,
    http_config: HTTPConfig | None = None,
    tls: TLSConfig | None = None,
    auth: TokenAuth | None = None,
) -> FrontDoors:
    """Serve ``backend`` on host:grpc_port, and on host:http_port (None: no HTTP; 0: any free
    port), both over TLS when ``tls`` is given and requiring a token with ``auth``. If the
    HTTP server cannot start, the gRPC one is stopped again before the error is raised. Call
    on the event loop that will serve both."""
    intake = Intake(backend, auth)
    server = await grpc_api.serve(intake, host, grpc_port, tls, auth)
    http = None
    if http_port is not None:
        try:
            http = await http_api.serve(
                intake, chat_template, host, http_port, http_config, tls, auth
            )
        except BaseException:
            await grpc_api.stop(server, grace_s=0)
            intake.close()
            raise
    return FrontDoors(intake, server, http, host, grpc_port)
