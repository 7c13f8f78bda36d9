"""Bearer-token authentication on both front doors: with a token file, every call but the
health checks must carry ``authorization: Bearer TOKEN`` (gRPC metadata, or the HTTP header
the OpenAI SDK sends its api_key in) naming one of the file's tokens."""

from __future__ import annotations

import hmac
from pathlib import Path

OPEN_GRPC_SERVICES = ("grpc.health.v1.Health",)  # probes carry no token
OPEN_HTTP_PATHS = ("/health",)


class TokenAuth:
    """The accepted tokens; compared in constant time."""

    def __init__(self, tokens: list[str]) -> None:
        if not tokens:
            raise ValueError("no token to accept")
        self._tokens = [t.encode() for t in tokens]

    @classmethod
    def from_file(cls, path: Path) -> TokenAuth:
        """One token per line; blank lines and lines starting with # are skipped."""
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"auth tokens file {path}: {exc.strerror}") from None
        tokens = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not tokens:
            raise ValueError(f"auth tokens file {path}: no token in it")
        return cls(tokens)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``authorization`` value ("Bearer TOKEN") names an accepted token."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        return any([hmac.compare_digest(given, accepted) for accepted in self._tokens])
