"""Conditional disaggregation: only prompts with enough uncached tokens on the decode pool are
sent to the prefill pool."""

from __future__ import annotations

from router.disaggregation import DisaggregationPolicy
from router.policy import PrefixAwarePolicy, RouterConfig

BLOCK = 16


def test_the_threshold_counts_the_tokens_the_decode_side_would_compute() -> None:
    policy = DisaggregationPolicy(local_prefill_tokens=256)
    assert not policy.prefill_remotely(256, 0)
    assert policy.prefill_remotely(257, 0)
    assert not policy.prefill_remotely(1000, 800)  # mostly cached where it decodes
    assert policy.prefill_remotely(1000, 700)


def test_a_prompt_the_decode_pool_holds_is_prefilled_there() -> None:
    decode = PrefixAwarePolicy(RouterConfig(block_size=BLOCK))
    decode.add_replica("d0")
    prompt = list(range(40 * BLOCK))
    policy = DisaggregationPolicy(local_prefill_tokens=64)
    assert policy.plan(prompt, None, decode, now=0.0)
    decode.record(decode.choose(prompt, None, now=0.0), "r1", now=0.0)  # routed there before
    assert not policy.plan(prompt, None, decode, now=0.1)
    assert policy.plan(prompt, "another tenant", decode, now=0.1)  # a salt shares nothing


def test_without_a_decode_view_every_long_prompt_goes_to_the_prefill_pool() -> None:
    policy = DisaggregationPolicy(local_prefill_tokens=64)
    assert policy.plan(list(range(65)), None, None, now=0.0)
    assert not policy.plan(list(range(64)), None, None, now=0.0)


def test_an_empty_decode_pool_counts_nothing_as_cached() -> None:
    decode = PrefixAwarePolicy(RouterConfig(block_size=BLOCK))
    assert DisaggregationPolicy(local_prefill_tokens=8).plan(list(range(9)), None, decode, now=0)
