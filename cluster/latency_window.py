"""Latencies observed over a sliding window of time, and their quantiles."""

from __future__ import annotations

import time
from collections import deque

from router.bench_summary import nearest_rank


class LatencyWindow:
    """The latencies of the last ``window_s`` seconds (at most ``max_samples`` of them, the
    newest kept: memory stays bounded under any load)."""

    def __init__(self, window_s: float, max_samples: int = 4096) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def observe(self, seconds: float, now: float | None = None) -> None:
        self._samples.append((time.monotonic() if now is None else now, seconds))

    def quantile(self, q: float, now: float | None = None) -> float | None:
        """The ``q`` quantile (nearest rank) of the window's latencies; None if it has none."""
        cutoff = (time.monotonic() if now is None else now) - self.window_s
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
        if not self._samples:
            return None
        return nearest_rank(sorted(seconds for _, seconds in self._samples), q)
