"""Per-client limits at the front doors: requests in flight, and arrivals per second."""

from __future__ import annotations

import time
from collections.abc import Callable

from router.auth import Client
from worker.errors import OverloadedError


class ClientLimits:
    """Counts each client's requests in flight and meters its arrivals with a token bucket
    (``requests_per_s`` refill, one second's worth of burst, at least one request). A request
    over either limit is refused at once (RESOURCE_EXHAUSTED, HTTP 429), before any work."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._in_flight: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # name: (tokens, when)

    def acquire(self, client: Client) -> None:
        """Count a new request of ``client``, or raise OverloadedError naming the limit."""
        in_flight = self._in_flight.get(client.name, 0)
        if client.max_concurrency is not None and in_flight >= client.max_concurrency:
            raise OverloadedError(
                f"client {client.name!r} has {in_flight} requests in flight, "
                f"at most {client.max_concurrency}"
            )
        if client.requests_per_s is not None:
            self._take_token(client, client.requests_per_s)
        self._in_flight[client.name] = in_flight + 1

    def release(self, client: Client) -> None:
        """One request of ``client`` ended."""
        left = self._in_flight[client.name] - 1
        if left:
            self._in_flight[client.name] = left
        else:
            del self._in_flight[client.name]

    def in_flight(self, client: Client) -> int:
        return self._in_flight.get(client.name, 0)

    def _take_token(self, client: Client, rate: float) -> None:
        burst = max(1.0, rate)
        now = self._clock()
        tokens, then = self._buckets.get(client.name, (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / rate
            raise OverloadedError(
                f"client {client.name!r} is over its {rate:g} requests per second; "
                f"retry in {wait:.2f} s"
            )
        self._buckets[client.name] = (tokens - 1.0, now)
