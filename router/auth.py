"""Bearer-token authentication on both front doors: with a token file, every call but the
health checks must carry ``authorization: Bearer TOKEN`` (gRPC metadata, or the HTTP header
the OpenAI SDK sends its api_key in) naming one of the file's tokens. Each token is a client
with its own policy (router/client_limits.py enforces it)."""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from pathlib import Path

OPEN_GRPC_SERVICES = ("grpc.health.v1.Health",)  # probes carry no token
OPEN_HTTP_PATHS = ("/health",)
PRIORITY_RANGE = (-1000, 1000)


@dataclass(frozen=True)
class Client:
    """What one token may do. ``priority`` is its requests' default and the most important
    they may ask for (lower runs first); ``max_concurrency`` caps its requests in flight and
    ``requests_per_s`` its arrival rate (bursts of up to one second's worth); None: no cap."""

    name: str
    priority: int = 0
    max_concurrency: int | None = None
    requests_per_s: float | None = None


_SETTINGS = ("name", "priority", "max_concurrency", "requests_per_s")


class TokenAuth:
    """The accepted tokens and their clients; tokens compared in constant time."""

    def __init__(self, tokens: list[str] | dict[str, Client]) -> None:
        if not tokens:
            raise ValueError("no token to accept")
        if isinstance(tokens, list):
            tokens = {t: Client(f"token-{i + 1}") for i, t in enumerate(tokens)}
        self._clients = [(token.encode(), client) for token, client in tokens.items()]

    @classmethod
    def from_file(cls, path: Path) -> TokenAuth:
        """One token per line, then optional settings, ``key=value`` separated by spaces
        (``name``, ``priority``, ``max_concurrency``, ``requests_per_s``); blank lines and
        lines starting with # are skipped."""
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"auth tokens file {path}: {exc.strerror}") from None
        clients: dict[str, Client] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#"):
                continue
            token, *settings = line.split()
            try:
                clients[token] = _client(settings, f"token-{len(clients) + 1}")
            except ValueError as exc:
                raise ValueError(f"auth tokens file {path}, line {number}: {exc}") from None
        if not clients:
            raise ValueError(f"auth tokens file {path}: no token in it")
        return cls(clients)

    def client_for(self, authorization: str | None) -> Client | None:
        """The client whose token an ``authorization`` value ("Bearer TOKEN") names; None if
        it names no accepted token."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        given = token.strip().encode()
        # Every token compared, so the time taken says nothing about which one matched.
        matches = [hmac.compare_digest(given, accepted) for accepted, _ in self._clients]
        return next((c for (_, c), m in zip(self._clients, matches, strict=True) if m), None)

    def allows(self, authorization: str | None) -> bool:
        return self.client_for(authorization) is not None


def _client(settings: list[str], default_name: str) -> Client:
    values: dict[str, str] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or key not in _SETTINGS:
            raise ValueError(f"{setting!r} is not one of {', '.join(s + '=' for s in _SETTINGS)}")
        values[key] = value
    try:
        priority = int(values.get("priority", "0"))
        concurrency = int(values["max_concurrency"]) if "max_concurrency" in values else None
        rate = float(values["requests_per_s"]) if "requests_per_s" in values else None
    except ValueError as exc:
        raise ValueError(f"a setting is not a number: {exc}") from None
    low, high = PRIORITY_RANGE
    if not low <= priority <= high:
        raise ValueError(f"priority must be in [{low}, {high}], got {priority}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {concurrency}")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"requests_per_s must be a number > 0, got {rate}")
    return Client(values.get("name", default_name), priority, concurrency, rate)
