"""Closed-loop load through the gRPC front door: each client sends its next request as soon as
its last one ends, and every request's outcome is kept (benchmarks, `kvfleet bench`, tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from router.client import GenerationClient
from router.load_test import Timing, measure

Prompt = Callable[[int, int], str | list[int]]  # (client index, its request number) -> prompt


class ClosedLoop:
    """``clients`` threads over one channel. Clients whose index is at or above ``active`` stop
    after their current request: lower it to shed load. ``max_tokens`` applies to the requests
    sent after it is set."""

    def __init__(self, target: str, clients: int, prompt: Prompt, max_tokens: int) -> None:
        self.active = clients
        self.max_tokens = max_tokens
        self.prompt = prompt
        self.results: list[Timing] = []
        self._lock = threading.Lock()
        self._client = GenerationClient(target)
        self._pool = ThreadPoolExecutor(clients, thread_name_prefix="closed-loop")
        self._futures: list[Future[None]] = [
            self._pool.submit(self._run, i) for i in range(clients)
        ]

    def _run(self, index: int) -> None:
        sent = 0
        while index < self.active:
            prompt = self.prompt(index, sent)
            result = measure(self._client, prompt, self.max_tokens, time.monotonic())
            with self._lock:
                self.results.append(result)
            sent += 1

    def snapshot(self) -> list[Timing]:
        with self._lock:
            return list(self.results)

    def stop(self, timeout_s: float = 300.0) -> list[Timing]:
        """Let every client finish its request in flight; all results."""
        self.active = 0
        for future in self._futures:
            future.result(timeout=timeout_s)
        self._pool.shutdown()
        self._client.close()
        return self.snapshot()
