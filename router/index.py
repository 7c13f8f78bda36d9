"""The router's prefix index: exact (from KV events) ∪ predicted (from its own routing)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from router.block_table import BlockTable
from router.cuckoo import BUCKET_SLOTS, CuckooTable
from router.event_feed import ReplicaFeed
from router.hashing import PromptBlocks, chain_key, engine_key, root_seed
from worker.errors import UnknownReplicaError
from worker.kv_events import BlockRemoved, BlockStored, KVEvent, KVSnapshot

MAX_REPLICAS = 64  # one bit each in a uint64 mask
TICKS_PER_S = 100
_TICK_REBASE = 1 << 31
_ENGINE_COLUMNS = {"key": np.int64}


class PrefixIndex:
    """Per block key, the replicas that hold the block (exact) or were just sent it (predicted).

        engine map:  engine sha256[:8] -> router key   resolves event parents and removals
        block table: router key -> exact | predicted replica masks, LRU stamp  (block_table.py)

    Exact entries come from each replica's KV events: a BlockStored is rehashed from its token
    ids chained on its parent's router key, so the index never trusts the engine's hash seed.
    Predicted entries are written when the router sends a prompt to a replica and expire after
    ``predicted_ttl_s``: they cover the lag before that replica's events arrive, and alone they
    are the approximate mode. Both share one hard memory cap (``max_bytes``), LRU evicted: 2/3
    for the block table, 1/3 for the engine map, whose entries never outnumber the blocks.
    """

    def __init__(self, block_size: int, max_bytes: int, predicted_ttl_s: float) -> None:
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.predicted_ttl_ticks = round(predicted_ttl_s * TICKS_PER_S)
        self.blocks = BlockTable(max_bytes * 2 // 3)
        engine_slot = CuckooTable.slot_bytes(_ENGINE_COLUMNS)
        self.engine = CuckooTable(
            _ENGINE_COLUMNS, 128, max_bytes // 3 // (engine_slot * BUCKET_SLOTS)
        )
        self._bits: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._feeds: dict[str, ReplicaFeed] = {}
        self._generation = 0
        self._time_origin: float | None = None
        self._last_stored: tuple[bytes, int] = (b"", 0)  # engine hash, router key

    # -- replicas ------------------------------------------------------------------------------

    @property
    def replica_ids(self) -> list[str]:
        return list(self._bits)

    def add_replica(self, replica_id: str) -> None:
        if replica_id in self._bits:
            return
        free = sorted(set(range(MAX_REPLICAS)) - set(self._bits.values()))
        if not free:
            raise ValueError(f"an index holds at most {MAX_REPLICAS} replicas")
        self._bits[replica_id] = free[0]
        self._names[free[0]] = replica_id
        self._feeds[replica_id] = ReplicaFeed()

    def remove_replica(self, replica_id: str) -> None:
        """Forget the replica and purge its entries; its bit may be reused by a new replica."""
        bit = self._bit(replica_id)
        self.blocks.clear_bit(bit)
        self._sync_engine_map()
        del self._bits[replica_id], self._feeds[replica_id], self._names[bit]

    def feed(self, replica_id: str) -> ReplicaFeed:
        self._bit(replica_id)
        return self._feeds[replica_id]

    def _bit(self, replica_id: str) -> int:
        try:
            return self._bits[replica_id]
        except KeyError:
            raise UnknownReplicaError(replica_id) from None

    def ticks(self, now: float) -> int:
        """``now`` (seconds, any origin) as the integer ticks the block table stores."""
        if self._time_origin is None:
            self._time_origin = now
        tick = round((now - self._time_origin) * TICKS_PER_S)
        if tick >= _TICK_REBASE:  # after ~250 days: keep uint32 expiry ticks from overflowing
            self._time_origin += _TICK_REBASE / 2 / TICKS_PER_S
            self.blocks.rebase_ticks(_TICK_REBASE // 2)
            tick -= _TICK_REBASE // 2
        return max(0, tick)

    # -- routing -------------------------------------------------------------------------------

    def longest_match(self, prompt: PromptBlocks, now: float) -> dict[str, int]:
        """Cached blocks of the prompt's longest prefix on each replica that holds any.

        One pass over the prompt's block keys, stopped right after block 0 when no replica
        holds that one; otherwise one vectorized lookup of every block, then a running AND of
        the replica masks gives each replica's depth."""
        limit = prompt.max_match_blocks
        if not limit or not self._bits:
            return {}
        tick = self.ticks(now)
        # The first block alone is cheap to probe, and settles most prompts nobody holds.
        alive = self.blocks.mask_one(prompt.first_key(), tick)
        if not alive:
            return {}
        masks = self.blocks.masks(prompt.keys()[:limit], tick)
        masks[0] &= alive
        prefix = np.bitwise_and.accumulate(masks)
        # prefix is monotone (bits only drop), so a bit's depth is where it drops out.
        depth = dict.fromkeys(_bits(alive & ~int(prefix[0])), 0)
        for index in np.flatnonzero(prefix[:-1] != prefix[1:]).tolist():
            for bit in _bits(int(prefix[index]) & ~int(prefix[index + 1])):
                depth[bit] = index + 1
        for bit in _bits(int(prefix[-1])):
            depth[bit] = limit
        names = self._names
        return {names[bit]: blocks for bit, blocks in depth.items() if blocks}

    def predict(self, replica_id: str, prompt: PromptBlocks, now: float) -> None:
        """Note that ``prompt`` was just sent to ``replica_id``: after its prefill, the replica
        will hold every full block of it."""
        bit = self._bit(replica_id)
        if prompt.num_blocks == 0:
            return
        tick = self.ticks(now)
        self.blocks.tick()
        self.blocks.predict(prompt.keys(), bit, tick + self.predicted_ttl_ticks, tick)
        self._sync_engine_map()

    # -- KV events -----------------------------------------------------------------------------

    def apply_events(self, replica_id: str, events: Iterable[KVEvent], now: float) -> None:
        """Fold a replica's events in, in order; a gap sets ``feed(replica).needs_resync``."""
        bit, feed = self._bit(replica_id), self._feeds[replica_id]
        tick = self.ticks(now)
        self.blocks.tick()
        for event in events:
            if not feed.admit(event.seq):
                continue
            if isinstance(event, BlockStored):
                _count(feed, self._store(bit, event, tick))
            else:
                self._remove(bit, event)

    def apply_snapshot(self, replica_id: str, snapshot: KVSnapshot, now: float) -> None:
        """Replace the replica's exact entries by a snapshot, and resume after it."""
        bit, feed = self._bit(replica_id), self._feeds[replica_id]
        tick = self.ticks(now)
        self.blocks.tick()
        self.blocks.clear_exact_bit(bit)
        self._sync_engine_map()
        pending = list(snapshot.blocks)
        while pending:
            outcomes = [(block, self._store(bit, block, tick)) for block in pending]
            left = [block for block, outcome in outcomes if outcome != _PLACED]
            if len(left) == len(pending):
                for _, outcome in outcomes:
                    _count(feed, outcome)
                break
            pending = left
        feed.next_seq, feed.needs_resync = snapshot.next_seq, False

    def _store(self, bit: int, event: BlockStored, tick: int) -> str:
        """Place one stored block, unless its parent is unknown to this router, or it is a first
        block whose extra keys it cannot rehash (a kind other than ``cache_salt``)."""
        if len(event.token_ids) != self.block_size:
            raise ValueError(
                f"replica block of {len(event.token_ids)} tokens, index block size "
                f"{self.block_size}: a pool's replicas and router must share one block size"
            )
        if event.parent_hash is None:  # a first block carries its request's extra keys
            extra = dict(event.extra_keys)
            salt = extra.pop("cache_salt", None)
            if extra:
                return _UNKNOWN_ROOT
            key = chain_key(root_seed(salt), event.token_ids)
        elif event.parent_hash == self._last_stored[0]:  # a chain of blocks: skip the lookup
            key = chain_key(self._last_stored[1], event.token_ids)
        else:
            parent = self.engine.find_one(engine_key(event.parent_hash))
            if parent < 0:
                return _ORPHAN
            key = chain_key(int(self.engine.cols["key"][parent]), event.token_ids)
        self._last_stored = (event.block_hash, key)
        self.blocks.set_exact(key, bit, tick)
        self._sync_engine_map()
        ekey = engine_key(event.block_hash)
        slot = self.engine.find_one(ekey)
        if slot >= 0:
            self.engine.cols["key"][slot] = key
            return _PLACED
        if not self.engine.has_room(1) and not self.engine.grow():
            return _PLACED  # unreachable while the map is swept: it never outgrows the blocks
        self.engine.insert_one(ekey, {"key": key})
        self.engine.take_dropped()  # a dropped entry only makes that block's removal a no-op
        return _PLACED

    def _remove(self, bit: int, event: BlockRemoved) -> None:
        slot = self.engine.find_one(engine_key(event.block_hash))
        if slot < 0:
            return  # evicted by the cap, or stored before a gap: nothing to clear
        if self.blocks.clear_exact(int(self.engine.cols["key"][slot]), bit) <= 0:
            self.engine.delete(np.array([slot]))

    def _sync_engine_map(self, force: bool = False) -> None:
        """Drop engine-map entries whose block is gone or no longer held by any replica."""
        if not force and self._generation == self.blocks.generation:
            return
        self._generation = self.blocks.generation
        slots = self.engine.occupied()
        held = self.blocks.has_exact(self.engine.cols["key"][slots].astype(np.int64))
        self.engine.delete(slots[~held])

    # -- accounting ----------------------------------------------------------------------------

    def num_blocks(self, now: float) -> int:
        """Blocks some replica holds or is predicted to hold."""
        return len(self.blocks.live_slots(self.ticks(now)))

    def num_entries(self) -> int:
        """Entries in the block table, expired predictions not yet reclaimed included: O(1),
        and safe to read from another thread (a metrics scrape)."""
        return len(self.blocks.table)

    def memory_bytes(self) -> int:
        """Bytes of the index's tables: what ``max_bytes`` caps."""
        return self.blocks.nbytes + self.engine.nbytes

    def check_integrity(self, now: float) -> None:
        """Raise AssertionError unless: both tables are consistent, memory is within the cap,
        masks name only known replicas, every engine-map entry leads to a block some replica
        holds, and the LRU stamps are consistent."""
        known = sum(1 << bit for bit in self._bits.values())
        self.blocks.check_integrity(known, self.ticks(now))
        self.engine.check_integrity()
        assert self.memory_bytes() <= self.max_bytes, "index is over its memory cap"
        assert set(self._bits) == set(self._feeds), "replica and feed registries differ"
        assert len(set(self._bits.values())) == len(self._bits), "two replicas share a bit"
        assert self._names == {b: r for r, b in self._bits.items()}, "bit names are stale"
        slots = self.engine.occupied()
        held = self.blocks.has_exact(self.engine.cols["key"][slots].astype(np.int64))
        assert np.all(held), "an engine-map entry leads to a block no replica holds"


_PLACED, _ORPHAN, _UNKNOWN_ROOT = "placed", "orphan", "unknown_root"


def _count(feed: ReplicaFeed, outcome: str) -> None:
    if outcome == _ORPHAN:
        feed.orphans += 1
    elif outcome == _UNKNOWN_ROOT:
        feed.unknown_roots += 1


def _bits(mask: int) -> list[int]:
    bits = []
    while mask:
        low = mask & -mask
        bits.append(low.bit_length() - 1)
        mask ^= low
    return bits
