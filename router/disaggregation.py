"""Conditional disaggregation: whether a prompt goes to the prefill pool or is prefilled by the
decode replica that will generate from it. Pure Python, like the routing policy it consults."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.policy import PrefixAwarePolicy
from worker.errors import NoReplicaError, OverloadedError


@dataclass(frozen=True, slots=True)
class DisaggregationPolicy:
    """A prompt is prefilled remotely only when the decode pool would otherwise compute more
    than ``local_prefill_tokens`` of it: a short or mostly cached prompt costs less computed
    where it decodes than computed elsewhere and moved. ``kv_lease_s``: how long the prefill
    replica holds the blocks for the decode side."""

    local_prefill_tokens: int = 256
    kv_lease_s: float = 30.0

    def prefill_remotely(self, num_prompt_tokens: int, decode_cached_tokens: int) -> bool:
        return num_prompt_tokens - decode_cached_tokens > self.local_prefill_tokens

    def plan(
        self,
        token_ids: Sequence[int],
        cache_salt: str | None,
        decode_policy: PrefixAwarePolicy | None,
        now: float,
    ) -> bool:
        """Whether to prefill remotely, given the decode pool's routing policy (None before
        its first request: nothing is known cached there)."""
        cached = 0
        if decode_policy is not None:
            try:
                cached = decode_policy.choose(token_ids, cache_salt, now=now).cached_tokens
            except (NoReplicaError, OverloadedError):  # it will wait or fail there anyway
                cached = 0
        return self.prefill_remotely(len(token_ids), cached)
