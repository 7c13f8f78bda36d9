"""The front doors' options, as `kvfleet serve` and `kvfleet router` take them: where they
listen, the HTTP door's, TLS and bearer tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from router.auth import TokenAuth
from router.http_api import ChatTemplate, HTTPConfig
from router.tls import TLSConfig


@dataclass(frozen=True)
class HTTPOptions:
    port: int  # 0: no HTTP front door
    chat_template: Path | None
    request_timeout_s: float | None

    @property
    def http_port(self) -> int | None:
        """As router.front_doors takes it: None for no HTTP front door."""
        return self.port or None

    @property
    def config(self) -> HTTPConfig:
        return HTTPConfig(request_timeout_s=self.request_timeout_s)

    def chat_template_for(self, model_dir: Path) -> ChatTemplate | None:
        """The --chat-template file's, else the model's own (ModelLoadError if unreadable)."""
        return ChatTemplate.from_model_dir(model_dir, self.chat_template)


def make(
    http_port: int, chat_template: Path | None, request_timeout_s: float | None, grpc_port: int
) -> HTTPOptions:
    """From the command line's flags; ValueError naming the bad one."""
    if not 0 <= http_port < 65536:
        raise ValueError(f"--http-port must be in 0..65535 (0: none), got {http_port}")
    if http_port and http_port == grpc_port:
        raise ValueError(f"--http-port and --port are both {grpc_port}")
    if chat_template is not None and not chat_template.is_file():
        raise ValueError(f"--chat-template {chat_template}: no such file")
    timeout = request_timeout_s
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"--request-timeout-s must be a positive number, got {timeout}")
    return HTTPOptions(http_port, chat_template, timeout)


@dataclass(frozen=True)
class DoorOptions:
    """Where and how one process's front doors listen."""

    host: str
    port: int  # gRPC
    http: HTTPOptions
    tls: TLSConfig | None = None
    auth: TokenAuth | None = None


def door_options(
    host: str,
    port: int,
    http: HTTPOptions,
    tls_files: tuple[Path | None, Path | None, Path | None] = (None, None, None),
    auth_tokens_file: Path | None = None,
) -> DoorOptions:
    """From the flags (``tls_files``: certificate, key, client CA); ValueError naming the bad
    one."""
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    cert, key, client_ca = tls_files
    tls = None
    if any(tls_files):
        if cert is None or key is None:
            raise ValueError(
                "--tls-cert and --tls-key go together (and --tls-client-ca needs both)"
            )
        tls = TLSConfig(cert, key, client_ca)
    auth = TokenAuth.from_file(auth_tokens_file) if auth_tokens_file is not None else None
    return DoorOptions(host, port, http, tls, auth)
