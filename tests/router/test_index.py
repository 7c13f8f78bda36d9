"""The prefix index: exact entries from real engine KV events, predicted entries with a TTL,
gaps and snapshots, replica removal, and the memory cap."""

from __future__ import annotations

import random
from typing import Any

import pytest

from router.hashing import PromptBlocks
from router.index import PrefixIndex
from router.policy import RouterConfig
from tests.router.replica_sim import CacheReplica
from worker.errors import UnknownReplicaError
from worker.kv_events import BlockStored, SnapshotBuilder

BLOCK = 16


def make_index(**changes: Any) -> PrefixIndex:
    """An index with the router's default settings, but for ``changes``."""
    defaults = RouterConfig()
    settings = {
        "block_size": BLOCK,
        "max_bytes": defaults.max_index_bytes,
        "predicted_ttl_s": defaults.predicted_ttl_s,
    }
    return PrefixIndex(**{**settings, **changes})


def prompt(tokens: list[int], salt: str | None = None) -> PromptBlocks:
    return PromptBlocks(tokens, BLOCK, salt)


def random_tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(50_000) for _ in range(n)]


def test_events_of_a_computed_prompt_make_it_an_exact_match() -> None:
    index, replica = make_index(), CacheReplica()
    index.add_replica("a")
    index.add_replica("b")
    tokens = list(range(100))  # 6 full blocks
    replica.run(tokens)
    index.apply_events("a", replica.drain(), now=0.0)
    assert index.longest_match(prompt(tokens), now=0.0) == {"a": 6}
    assert index.longest_match(prompt(tokens[:48] + [7] * 50), now=0.0) == {"a": 3}
    assert index.longest_match(prompt(tokens[:64]), now=0.0) == {"a": 3}  # last token computed
    assert index.longest_match(prompt([9] * 100), now=0.0) == {}
    index.check_integrity(now=0.0)


def test_exact_index_agrees_with_every_engine_cache_under_eviction() -> None:
    rng = random.Random(1)
    replicas = {name: CacheReplica(num_blocks=40) for name in "abc"}
    index = make_index()
    for name in replicas:
        index.add_replica(name)
    stems = [random_tokens(rng, 16 * rng.randrange(1, 6)) for _ in range(8)]
    queries = []
    for step in range(150):
        tokens = rng.choice(stems) + random_tokens(rng, rng.randrange(0, 60))
        name = rng.choice("abc")
        replicas[name].run(tokens)
        index.apply_events(name, replicas[name].drain(), now=float(step))
        queries.append(tokens)
        if step % 10 == 0:
            index.check_integrity(now=float(step))
    for tokens in queries[-60:]:
        expected = {
            name: replica.cached_prefix_tokens(tokens) // BLOCK
            for name, replica in replicas.items()
            if replica.cached_prefix_tokens(tokens)
        }
        assert index.longest_match(prompt(tokens), now=200.0) == expected


def test_removed_blocks_leave_the_index() -> None:
    index, replica = make_index(), CacheReplica(num_blocks=5)
    index.add_replica("a")
    first, second = list(range(65)), list(range(1000, 1065))
    replica.run(first)
    replica.run(second)  # 5 blocks each: evicts all 4 of the first (BlockRemoved)
    index.apply_events("a", replica.drain(), now=0.0)
    assert replica.cached_prefix_tokens(first) == 0
    assert index.longest_match(prompt(first), now=0.0) == {}
    assert index.longest_match(prompt(second), now=0.0) == {"a": 4}
    index.check_integrity(now=0.0)


def test_a_gap_asks_for_resync_and_a_snapshot_restores_the_exact_state() -> None:
    index, replica, builder = make_index(), CacheReplica(num_blocks=24), SnapshotBuilder()
    index.add_replica("a")
    rng = random.Random(2)
    prompts = [random_tokens(rng, 50) for _ in range(12)]
    for i, tokens in enumerate(prompts):
        replica.run(tokens)
        events = replica.drain()
        builder.apply(events)
        if i not in (4, 5):  # these batches are lost on the way
            index.apply_events("a", events, now=0.0)
    feed = index.feed("a")
    assert feed.needs_resync and feed.gaps == 1
    index.apply_snapshot("a", builder.snapshot(), now=1.0)
    assert not index.feed("a").needs_resync
    for tokens in prompts:
        held = replica.cached_prefix_tokens(tokens) // BLOCK
        assert index.longest_match(prompt(tokens), now=1.0) == ({"a": held} if held else {})
    replica.run(prompts[0])  # the stream resumes right after the snapshot
    index.apply_events("a", replica.drain(), now=2.0)
    assert not index.feed("a").needs_resync
    index.check_integrity(now=2.0)


def test_duplicate_events_are_skipped_and_orphans_are_counted() -> None:
    index, replica = make_index(), CacheReplica()
    index.add_replica("a")
    replica.run(list(range(40)))
    events = replica.drain()
    index.apply_events("a", events, now=0.0)
    index.apply_events("a", events, now=0.0)
    assert index.feed("a").duplicates == len(events)
    orphan = BlockStored(len(events), b"x" * 32, b"unknown-parent" * 2, tuple(range(16)))
    index.apply_events("a", [orphan], now=0.0)
    assert index.feed("a").orphans == 1
    index.check_integrity(now=0.0)


def test_salted_blocks_are_indexed_from_the_salt_their_first_block_carries() -> None:
    tokens = list(range(80))
    index, replica = make_index(), CacheReplica()
    index.add_replica("a")
    replica.run(tokens, cache_salt="s1")
    index.apply_events("a", replica.drain(), now=0.0)
    assert index.longest_match(prompt(tokens, "s1"), now=0.0) == {"a": 4}
    assert index.longest_match(prompt(tokens, "s2"), now=0.0) == {}
    assert index.longest_match(prompt(tokens), now=0.0) == {}
    foreign = BlockStored(99, b"r" * 32, None, tuple(range(16)), (("lora", "x"),))
    index.apply_events("a", [foreign], now=0.0)
    assert index.feed("a").unknown_roots == 1  # an extra key this router cannot rehash


def test_predicted_entries_match_until_their_ttl_ends() -> None:
    index = make_index(predicted_ttl_s=10.0)
    index.add_replica("a")
    index.add_replica("b")
    tokens = list(range(70))
    index.predict("b", prompt(tokens), now=100.0)
    assert index.longest_match(prompt(tokens), now=105.0) == {"b": 4}
    assert index.longest_match(prompt(tokens[:40]), now=109.9) == {"b": 2}
    assert index.longest_match(prompt(tokens), now=110.5) == {}
    assert index.num_blocks(now=110.5) == 0  # dead slots are no longer counted
    index.check_integrity(now=111.0)


def test_exact_and_predicted_entries_combine_per_block() -> None:
    index, replica = make_index(), CacheReplica()
    index.add_replica("a")
    tokens = list(range(130))
    replica.run(tokens[:64])
    index.apply_events("a", replica.drain(), now=0.0)
    index.predict("a", prompt(tokens), now=0.0)
    assert index.longest_match(prompt(tokens), now=1.0) == {"a": 8}


def test_a_removed_replica_is_purged_and_its_bit_is_not_inherited() -> None:
    index, replica = make_index(), CacheReplica()
    index.add_replica("a")
    tokens = list(range(100))
    replica.run(tokens)
    index.apply_events("a", replica.drain(), now=0.0)
    index.predict("a", prompt(list(range(500, 600))), now=0.0)
    index.remove_replica("a")
    index.add_replica("c")  # takes the freed bit
    assert index.longest_match(prompt(tokens), now=0.0) == {}
    assert index.longest_match(prompt(list(range(500, 600))), now=0.0) == {}
    assert len(index.engine) == 0
    index.check_integrity(now=0.0)
    with pytest.raises(UnknownReplicaError):
        index.apply_events("a", [], now=0.0)


def test_memory_stays_under_the_cap_and_eviction_is_least_recently_used() -> None:
    cap = 96 << 10
    index = make_index(max_bytes=cap, predicted_ttl_s=1e6)
    index.add_replica("a")
    rng = random.Random(3)
    hot = random_tokens(rng, 16 * 20 + 1)
    for step in range(400):
        if step % 10 == 0:
            index.predict("a", prompt(hot), now=float(step))  # touched again and again
        index.predict("a", prompt(random_tokens(rng, 16 * 20 + 1)), now=float(step))
        assert index.memory_bytes() <= cap
    assert index.blocks.evicted > 0
    assert index.longest_match(prompt(hot), now=400.0) == {"a": 20}
    old = random.Random(3)
    random_tokens(old, 16 * 20 + 1)
    first = random_tokens(old, 16 * 20 + 1)  # the first cold prompt, long evicted
    assert index.longest_match(prompt(first), now=400.0) == {}
    index.check_integrity(now=400.0)


def test_predictions_survive_the_rebase_of_the_tick_clock() -> None:
    index = make_index(predicted_ttl_s=10.0)
    index.add_replica("a")
    tokens = list(range(70))
    start = 0.0
    index.ticks(start)
    late = start + (1 << 31) / 100 - 5.0  # 5 s before the 32-bit tick clock is rebased
    index.predict("a", prompt(tokens), now=late)
    assert index.longest_match(prompt(tokens), now=late + 8.0) == {"a": 4}  # rebased meanwhile
    assert index.longest_match(prompt(tokens), now=late + 11.0) == {}
    index.check_integrity(now=late + 11.0)


def test_an_index_full_at_its_cap_costs_at_most_64_bytes_a_block() -> None:
    index = make_index(max_bytes=1 << 20)
    index.add_replica("a")
    replica = CacheReplica(num_blocks=1 << 15)
    rng = random.Random(4)
    while index.blocks.evicted == 0:
        replica.run(random_tokens(rng, 64 * BLOCK))
        index.apply_events("a", replica.drain(), now=0.0)
    assert index.memory_bytes() <= 1 << 20
    assert index.memory_bytes() / index.num_blocks(now=0.0) <= 64
    index.check_integrity(now=0.0)
