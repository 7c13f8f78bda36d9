"""The routing cost: an estimate of a request's time to first token on each replica."""

from __future__ import annotations

from dataclasses import dataclass

from router.load import ReplicaLoad


@dataclass(frozen=True)
class CostModel:
    """Time to first token on a replica, in seconds, from its load and the prompt's cache hit:

        ttft = (queued_prefill + uncached + running * running_token_equiv) / prefill_rate
               + kv_penalty_s * clamp((kv_usage - kv_soft_usage) / (1 - kv_soft_usage), 0, 1)

    Queued and uncached tokens are the prefill work ahead of the first token. Each running
    sequence takes a token of every step's budget, so decodes slow prefill down; a nearly full KV
    cache risks preemption. ``prefill_tokens_per_s`` is the prior rate, until a replica reports
    the rate it measured. The policy adds what a placement costs later (policy.py).

    A replica with ``max_waiting`` requests queued takes nothing. One with fewer free KV blocks
    than the prompt's uncached blocks (free blocks as last reported, less those its waiting
    requests and this router's dispatches since then will take: a waiting request holds no
    block yet, but will) must wait for running requests to free memory: ``kv_wait_s`` adds up
    to ``kv_penalty_s`` for the missing fraction. A cost, not a cap: a request that hits a long
    prefix on a full replica waits briefly there, where a miss elsewhere would recompute it.
    """

    prefill_tokens_per_s: float = 8000.0
    running_token_equiv: float = 16.0
    kv_soft_usage: float = 0.8
    kv_penalty_s: float = 0.25
    max_waiting: int = 256

    def admits(self, load: ReplicaLoad) -> bool:
        """Under the queue cap (the KV cap depends on the prompt)."""
        return load.num_waiting < self.max_waiting

    def free_blocks(self, load: ReplicaLoad, block_size: int) -> int:
        return load.report.num_free_blocks - -(-int(load.queued_tokens) // block_size)

    def kv_wait_s(self, needed_blocks: int, free_blocks: int) -> float:
        """The wait for memory of a prompt needing ``needed_blocks`` new blocks."""
        if needed_blocks <= free_blocks or needed_blocks <= 0:
            return 0.0
        missing = needed_blocks - max(free_blocks, 0)
        return self.kv_penalty_s * min(1.0, missing / needed_blocks)

    def queue_s(self, load: ReplicaLoad, prefill_rate: float) -> float:
        """The part of the TTFT that does not depend on the prompt: work already ahead of it."""
        report = load.report
        work = load.queued_tokens + report.num_running * self.running_token_equiv
        queue = work / prefill_rate
        if report.kv_usage > self.kv_soft_usage:
            excess = (report.kv_usage - self.kv_soft_usage) / (1.0 - self.kv_soft_usage)
            queue += self.kv_penalty_s * min(1.0, excess)
        return queue
