"""BlockPool and KVCacheManager: reference counts, prefix cache, eviction order, integrity."""

from __future__ import annotations

import pytest

from worker.block_hash import hash_block
from worker.block_pool import BlockPool
from worker.kv_cache_manager import KVCacheManager
from worker.kv_events import BlockRemoved, BlockStored
from worker.request import Request
from worker.sampling_params import SamplingParams

BS = 4


def _request(rid: str, tokens: list[int], salt: str | None = None) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=4), BS, cache_salt=salt)


def _run_prefill(kv: KVCacheManager, req: Request) -> None:
    """Admit a request as the scheduler would and mark its whole prompt computed."""
    assert kv.admit(req, req.num_tokens) is not None
    req.num_computed_tokens = req.num_tokens
    kv.cache_blocks(req)


def test_allocate_and_free_returns_every_block() -> None:
    pool = BlockPool(8)
    blocks = pool.allocate(5)
    assert pool.num_free == 3
    pool.free(reversed(blocks))
    assert pool.num_free == 8
    pool.check_integrity()


def test_allocating_more_than_free_raises_and_changes_nothing() -> None:
    pool = BlockPool(4)
    pool.allocate(3)
    with pytest.raises(ValueError, match="asked for 2 blocks, 1 free"):
        pool.allocate(2)
    assert pool.num_free == 1
    pool.check_integrity()


def test_second_request_with_same_prefix_hits_cache() -> None:
    kv = KVCacheManager(16, BS)
    first = _request("a", list(range(10)))
    _run_prefill(kv, first)
    second = _request("b", [*range(8), 99, 98, 97])
    hits = kv.get_computed_blocks(second)
    assert [b.block_id for b in hits] == kv.block_ids("a")[:2]
    kv.check_integrity()


def test_cache_hit_leaves_last_token_to_compute() -> None:
    kv = KVCacheManager(16, BS)
    _run_prefill(kv, _request("a", list(range(8))))
    # Exactly two full blocks: the second cannot be used, the last token needs its logits.
    assert len(kv.get_computed_blocks(_request("b", list(range(8))))) == 1


def test_different_salts_never_share_blocks() -> None:
    kv = KVCacheManager(16, BS)
    _run_prefill(kv, _request("a", list(range(12)), salt="tenant-1"))
    assert kv.get_computed_blocks(_request("b", list(range(12)), salt="tenant-2")) == []
    assert kv.get_computed_blocks(_request("c", list(range(12)))) == []
    assert len(kv.get_computed_blocks(_request("d", list(range(12)), salt="tenant-1"))) == 2


def test_chained_hash_commits_to_the_whole_prefix() -> None:
    first = hash_block(None, [1, 2, 3, 4])
    assert hash_block(first, [5, 6, 7, 8]) != hash_block(
        hash_block(None, [0, 2, 3, 4]), [5, 6, 7, 8]
    )
    assert hash_block(None, [1, 2, 3, 4], (("cache_salt", "x"),)) != first


def test_freed_cached_blocks_are_revived_by_a_hit() -> None:
    kv = KVCacheManager(8, BS)
    a = _request("a", list(range(9)))
    _run_prefill(kv, a)
    kept = kv.block_ids("a")[:2]
    kv.free(a)
    assert kv.pool.num_free == 8
    b = _request("b", list(range(9)))
    _run_prefill(kv, b)
    assert kv.block_ids("b")[:2] == kept
    assert b.num_tokens == 9
    kv.check_integrity()


def test_eviction_takes_uncached_blocks_first_then_tails_before_prefixes() -> None:
    kv = KVCacheManager(6, BS)
    a = _request("a", list(range(13)))  # 3 full cached blocks + 1 partial block
    _run_prefill(kv, a)
    kv.free(a)
    kv.pool.events.drain()
    # Three blocks hold no cached prefix (the partial one, two never used): they go first.
    uncached = kv.pool.allocate(3)
    assert not kv.pool.events.drain()
    # Then cached blocks, the tail before the prefix it extends.
    tails = kv.pool.allocate(2)
    evicted = [e.block_hash for e in kv.pool.events.drain() if isinstance(e, BlockRemoved)]
    assert evicted == [a.block_hashes[2], a.block_hashes[1]]
    assert kv.pool.lookup(a.block_hashes[0]) is not None
    kv.pool.free([*uncached, *tails])
    kv.pool.check_integrity()


def test_events_describe_stored_and_evicted_blocks_in_order() -> None:
    kv = KVCacheManager(8, BS)
    a = _request("a", list(range(9)))
    _run_prefill(kv, a)
    stored = kv.pool.events.drain()
    assert [type(e) for e in stored] == [BlockStored, BlockStored]
    assert stored[0].parent_hash is None and stored[1].parent_hash == stored[0].block_hash
    assert stored[1].token_ids == (4, 5, 6, 7)
    assert [e.seq for e in stored] == [0, 1]
    kv.free(a)
    _run_prefill(kv, _request("b", list(range(100, 132))))  # needs every block: evicts a's
    events = kv.pool.events.drain()
    removed = [e for e in events if isinstance(e, BlockRemoved)]
    assert {e.block_hash for e in removed} == {e.block_hash for e in stored}
    assert [e.seq for e in events] == list(range(2, 2 + len(events)))
    kv.check_integrity()


def test_integrity_check_catches_a_double_free() -> None:
    pool = BlockPool(4)
    (block,) = pool.allocate(1)
    pool.free([block])
    block.ref_cnt = 1  # corrupt: in the free queue yet referenced
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_allocate_slots_fails_without_side_effects_when_short() -> None:
    kv = KVCacheManager(3, BS)
    a = _request("a", list(range(8)))
    assert kv.allocate_slots(a, 8)
    b = _request("b", list(range(100, 108)))
    assert not kv.allocate_slots(b, 8)
    assert kv.block_ids("b") == []
    assert kv.pool.num_free == 1
    kv.check_integrity()


def test_first_block_event_carries_the_salt_so_a_router_can_rehash_it() -> None:
    kv = KVCacheManager(8, BS)
    _run_prefill(kv, _request("a", list(range(9)), salt="tenant-1"))
    first, second = kv.pool.events.drain()
    assert isinstance(first, BlockStored) and isinstance(second, BlockStored)
    assert first.extra_keys == (("cache_salt", "tenant-1"),)
    assert second.extra_keys == ()  # the chain carries it from here on
    assert first.block_hash == hash_block(None, first.token_ids, first.extra_keys)
