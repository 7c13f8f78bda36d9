"""TLS for the front doors: a certificate and key for both ports, and, for mutual TLS, the CA
whose client certificates are required."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path  # PEM, the chain the front doors present
    key_file: Path  # PEM
    client_ca_file: Path | None = None  # PEM: set, clients must present a certificate it signed

    def __post_init__(self) -> None:
        for name, path in (
            ("cert_file", self.cert_file),
            ("key_file", self.key_file),
            ("client_ca_file", self.client_ca_file),
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"tls {name} {path}: no such file")

    def grpc_credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "ssl_certfile": str(self.cert_file),
            "ssl_keyfile": str(self.key_file),
        }
        if self.client_ca_file is not None:
            options |= {
                "ssl_ca_certs": str(self.client_ca_file),
                "ssl_cert_reqs": ssl.CERT_REQUIRED,
            }
        return options
