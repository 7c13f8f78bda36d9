"""Closed-loop load through the gRPC front door: each client sends its next request as soon as
its last one ends, and every request's outcome is kept (benchmarks, `kvfleet bench`, tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from router.client import GenerationClient


@dataclass(frozen=True, slots=True)
class RequestResult:
    """One request as its client saw it (times from time.monotonic)."""

    sent_at: float
    ttft_s: float | None  # None: no token arrived
    finished_at: float
    tokens_asked: int
    tokens: int  # tokens received
    replica: str  # "" when it failed
    error: str = ""  # the gRPC status, when it failed

    @property
    def answered(self) -> bool:
        """Finished without error, with every token asked for (ignore_eos requests)."""
        return not self.error and self.tokens == self.tokens_asked


Prompt = Callable[[int, int], str]  # (client index, its request number) -> prompt text


class ClosedLoop:
    """``clients`` threads over one channel. Clients whose index is at or above ``active`` stop
    after their current request: lower it to shed load. ``max_tokens`` applies to the requests
    sent after it is set."""

    def __init__(self, target: str, clients: int, prompt: Prompt, max_tokens: int) -> None:
        self.active = clients
        self.max_tokens = max_tokens
        self.prompt = prompt
        self.results: list[RequestResult] = []
        self._lock = threading.Lock()
        self._client = GenerationClient(target)
        self._pool = ThreadPoolExecutor(clients, thread_name_prefix="closed-loop")
        self._futures: list[Future[None]] = [
            self._pool.submit(self._run, i) for i in range(clients)
        ]

    def _run(self, index: int) -> None:
        sent = 0
        while index < self.active:
            result = self._one(self.prompt(index, sent), self.max_tokens)
            with self._lock:
                self.results.append(result)
            sent += 1

    def _one(self, prompt: str, max_tokens: int) -> RequestResult:
        start, ttft, tokens, replica = time.monotonic(), None, 0, ""
        try:
            stream = self._client.generate(prompt, max_tokens=max_tokens, ignore_eos=True)
            for response in stream:
                if ttft is None and response.token_ids:
                    ttft = time.monotonic() - start
                tokens += len(response.token_ids)
                if response.HasField("finished"):
                    replica = response.finished.replica
        except grpc.RpcError as exc:
            error = exc.code().name
            return RequestResult(start, ttft, time.monotonic(), max_tokens, tokens, "", error)
        return RequestResult(start, ttft, time.monotonic(), max_tokens, tokens, replica)

    def snapshot(self) -> list[RequestResult]:
        with self._lock:
            return list(self.results)

    def stop(self, timeout_s: float = 300.0) -> list[RequestResult]:
        """Let every client finish its request in flight; all results."""
        self.active = 0
        for future in self._futures:
            future.result(timeout=timeout_s)
        self._pool.shutdown()
        self._client.close()
        return self.snapshot()
