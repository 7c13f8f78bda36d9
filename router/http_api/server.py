"""Start and stop the HTTP front door: uvicorn on the caller's event loop, beside gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from router.auth import TokenAuth
from router.http_api.app import HTTPConfig, build_app
from router.http_api.chat_template import ChatTemplate
from router.intake import Intake
from router.tls import TLSConfig

KEEP_ALIVE_S = 75


class _Server(uvicorn.Server):
    """Leaves signals to the process that embeds it (uvicorn would take SIGINT and SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HTTPServer:
    """A running uvicorn server; ``stop`` it on the loop that started it."""

    def __init__(self, server: _Server, task: asyncio.Task[None]) -> None:
        self._server = server
        self._task = task

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    async def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new connections, give open ones ``grace_s`` (whole seconds, at least one:
        uvicorn's unit), then cancel them (which aborts their engine requests)."""
        self._server.config.timeout_graceful_shutdown = max(round(grace_s), 1)
        self._server.should_exit = True
        await self._task


async def serve(
    intake: Intake,
    chat_template: ChatTemplate | None,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: HTTPConfig | None = None,
    tls: TLSConfig | None = None,
    auth: TokenAuth | None = None,
) -> HTTPServer:
    """Serve the OpenAI API for ``intake``'s backend on host:port (0: any free port), over TLS
    when ``tls`` is given (HTTPS; with its client CA, only to clients it signed). Must run
    on the event loop that serves the gRPC calls, so both front doors share it. A port that
    cannot be bound raises OSError naming it (uvicorn itself would exit the process)."""
    sock = _bind(host, port)
    app = build_app(intake, chat_template, config, auth)
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            # Longer than clients keep idle pooled connections: with uvicorn's 5 s, a client
            # reusing a connection the server was closing failed its request (seen in bench.http).
            timeout_keep_alive=KEEP_ALIVE_S,
            **(tls.uvicorn_options() if tls is not None else {}),
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            await task  # raises what stopped it
            raise OSError(f"the HTTP server did not start on {host}:{port}")
        await asyncio.sleep(0.01)
    return HTTPServer(server, task)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle off only on connections of a socket
    # whose proto says TCP; without it every streamed chunk waited for a delayed ACK (bench.http
    # measured HTTP's time to first token at 1.4-1.6x gRPC's).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from None
    return sock
