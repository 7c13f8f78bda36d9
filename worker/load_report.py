"""A replica's load, as the router reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadReport:
    num_waiting: int
    waiting_prefill_tokens: int  # prompt tokens of waiting requests not yet computed
    num_running: int
    kv_usage: float  # fraction of KV blocks in use
    num_free_blocks: int
    prefix_queries: int  # tokens looked up in the prefix cache, since start
    prefix_hits: int  # of which found cached
