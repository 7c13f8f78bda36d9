"""A replica's load, as the router reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadReport:
    num_waiting: int
    prefill_tokens: int  # prompt tokens still to compute, waiting and running requests'
    num_running: int
    kv_usage: float  # fraction of KV blocks in use
    num_free_blocks: int
    prefix_queries: int  # tokens looked up in the prefix cache, since start
    prefix_hits: int  # of which found cached
    prefill_tokens_per_s: float = 0.0  # measured on recent steps; 0 until measured
    num_blocks: int = 0  # the KV cache's size in blocks; 0: not reported


class PrefillRateMeter:
    """A replica's prefill throughput as routers should price it: an exponential average of
    prompt tokens per second over recent steps that computed at least ``min_tokens`` of them
    (steps of mostly decodes say little about the rate)."""

    def __init__(self, min_tokens: int = 64, weight: float = 0.2) -> None:
        self.min_tokens = min_tokens
        self.weight = weight
        self.tokens_per_s = 0.0  # 0 until a step is measured

    def observe(self, prefill_tokens: int, seconds: float) -> None:
        if prefill_tokens < self.min_tokens or seconds <= 0:
            return
        rate = prefill_tokens / seconds
        previous = self.tokens_per_s
        self.tokens_per_s = rate if not previous else previous + self.weight * (rate - previous)
