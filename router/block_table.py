"""Which replicas hold each block, exactly (from KV events) and predicted (from routing), in a
hard memory cap with LRU eviction."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from router.cuckoo import BUCKET_SLOTS, CuckooTable, Int64Array

COLUMNS = {"exact": np.uint64, "pred": np.uint64, "pred_until": np.uint32, "stamp": np.uint32}
SLOT_BYTES = CuckooTable.slot_bytes(COLUMNS)  # 32
EVICT_FRACTION = 1 / 32
_STAMP_LIMIT = 2**32 - 2

UInt64Array = NDArray[np.uint64]


class BlockTable:
    """One slot per router block key (see router/hashing.py):

        key -> exact       bit r set: replica r reported the block stored (KV events)
               pred        bit r set: the router sent the prompt to replica r ...
               pred_until  ... and believes it until this tick (then the bit is ignored)
               stamp       LRU clock of the last write; 0 only in empty slots

    32 bytes a slot at 80-90 % load (cuckoo.py), so 36-40 bytes a block. Time is in integer ticks
    (PrefixIndex converts seconds). A slot whose exact mask is empty and whose prediction has
    expired is dead: lookups ignore it, and the next eviction pass reclaims it first.

    ``generation`` counts the passes that removed keys behind the caller's back (LRU eviction,
    walk drops, bit clears), so the owner knows when to sweep references to them.
    """

    def __init__(self, max_bytes: int, initial_buckets: int = 256, seed: int = 0) -> None:
        max_buckets = max_bytes // (SLOT_BYTES * BUCKET_SLOTS)
        if max_buckets < 1:
            raise ValueError(f"max_bytes {max_bytes} is too small for one bucket")
        self.table = CuckooTable(COLUMNS, initial_buckets, max_buckets, seed=seed)
        self.clock = 1
        self.generation = 0
        self.evicted = 0  # live blocks evicted by the LRU cap

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def _valid(self, slots: Int64Array, now: int) -> UInt64Array:
        cols = self.table.cols
        live = cols["pred_until"].take(slots) >= now
        return np.asarray(cols["exact"].take(slots) | (cols["pred"].take(slots) * live))

    def masks(self, keys: Int64Array, now: int) -> UInt64Array:
        """Replica mask of each key: exact | unexpired predicted; 0 where the key is absent."""
        rows, slots = self.table.find_present(keys)
        masks = np.zeros(len(keys), dtype=np.uint64)
        masks[rows] = self._valid(slots, now)
        return masks

    def mask_one(self, key: int, now: int) -> int:
        slot = self.table.find_one(key) if key else -1
        if slot < 0:
            return 0
        cols = self.table.cols
        exact = int(cols["exact"][slot])
        return exact | int(cols["pred"][slot]) if cols["pred_until"][slot] >= now else exact

    def tick(self) -> int:
        """A fresh LRU stamp for one write operation."""
        if self.clock >= _STAMP_LIMIT:
            self._renumber_stamps()
        self.clock += 1
        return self.clock

    # -- exact entries, one block at a time (KV events) -----------------------------------------

    def set_exact(self, key: int, bit: int, now: int) -> None:
        if key == 0:
            return  # 0 marks empty slots: such a block (odds 2**-64) is never indexed
        slot = self.table.find_one(key)
        if slot < 0:
            self.make_room(1, now)
            self.table.insert_one(key, {"exact": 1 << bit, "stamp": self.clock})
            self._after_insert()
            return
        cols = self.table.cols
        cols["exact"][slot] |= np.uint64(1 << bit)
        cols["pred"][slot] &= np.uint64(~(1 << bit) & 0xFFFFFFFFFFFFFFFF)  # exact supersedes
        cols["stamp"][slot] = self.clock

    def clear_exact(self, key: int, bit: int) -> int:
        """Drop replica ``bit`` from the key's exact mask, and from its predicted one: the
        replica evicted the block, which contradicts any prediction that it holds it. Return
        what is left of the exact mask (-1: no key)."""
        slot = self.table.find_one(key) if key else -1
        if slot < 0:
            return -1
        cols = self.table.cols
        left = int(cols["exact"][slot]) & ~(1 << bit)
        cols["exact"][slot] = left
        cols["pred"][slot] &= np.uint64(~(1 << bit) & 0xFFFFFFFFFFFFFFFF)
        return left

    def has_exact(self, keys: Int64Array) -> NDArray[np.bool_]:
        slots = self.table.find(keys)
        exact = self.table.cols["exact"][np.maximum(slots, 0)]
        return np.asarray((slots >= 0) & (exact != 0))

    # -- predicted entries, a prompt at a time (routing) ----------------------------------------

    def predict(self, keys: Int64Array, bit: int, until: int, now: int) -> None:
        """Mark ``keys`` predicted on replica ``bit`` until tick ``until``."""
        keys = keys[keys != 0]
        slots = self.table.find(keys)
        missing = np.unique(keys[slots < 0])
        if len(missing):
            self.make_room(len(missing), now)
            missing = np.unique(keys[self.table.find(keys) < 0])  # eviction may take some
            self.table.insert_many(missing, {"stamp": self.clock})
            self._after_insert()
            slots = self.table.find(keys)
            slots = slots[slots >= 0]  # a key a failed walk dropped stays unpredicted
        cols = self.table.cols
        cols["pred"][slots] |= np.uint64(1 << bit)
        cols["pred_until"][slots] = np.maximum(cols["pred_until"][slots], until)
        cols["stamp"][slots] = self.clock

    # -- whole-table passes -------------------------------------------------------------------

    def clear_bit(self, bit: int) -> None:
        """Forget replica ``bit`` everywhere, exact and predicted: the replica is gone."""
        keep = np.uint64(~(1 << bit) & 0xFFFFFFFFFFFFFFFF)
        self.table.cols["exact"] &= keep
        self.table.cols["pred"] &= keep
        self.generation += 1

    def clear_exact_bit(self, bit: int) -> None:
        """Forget what replica ``bit`` reported (its cache was cleared, or a snapshot follows)."""
        self.table.cols["exact"] &= np.uint64(~(1 << bit) & 0xFFFFFFFFFFFFFFFF)
        self.generation += 1

    def rebase_ticks(self, delta: int) -> None:
        """Move the tick origin ``delta`` ticks forward; expiries already past stay past."""
        until = self.table.cols["pred_until"]
        until[:] = np.maximum(until.astype(np.int64) - delta, 0).astype(np.uint32)

    def live_slots(self, now: int) -> Int64Array:
        slots = self.table.occupied()
        return slots[self._valid(slots, now) != 0]

    def make_room(self, extra: int, now: int) -> None:
        """Ensure ``extra`` more keys fit: reclaim dead slots, else grow, else evict LRU."""
        if self.table.has_room(extra):
            return
        slots = self.table.occupied()
        dead = slots[self._valid(slots, now) == 0]
        if len(dead) >= extra and len(dead) * 16 >= len(slots):  # worth a pass on its own
            self._remove(dead)
            return
        while not self.table.has_room(extra) and self.table.grow():
            pass
        if self.table.has_room(extra):
            return
        self._remove(dead)
        slots = self.table.occupied()
        allowed = int(self.table.max_load * self.table.capacity)
        count = min(len(slots), max(len(slots) + extra - allowed, int(allowed * EVICT_FRACTION)))
        if count > 0:
            stamps = self.table.cols["stamp"][slots]
            oldest = slots[np.argpartition(stamps, count - 1)[:count]]
            self.evicted += count
            self._remove(oldest)

    def _remove(self, slots: Int64Array) -> None:
        self.table.delete(slots)
        self.generation += 1

    def _after_insert(self) -> None:
        if self.table.take_dropped():
            self.generation += 1

    def _renumber_stamps(self) -> None:
        # Rank-preserving, so the LRU order survives the wrap of the 32-bit clock.
        slots = self.table.occupied()
        stamps = self.table.cols["stamp"]
        ranks = np.unique(stamps[slots], return_inverse=True)[1]
        stamps[slots] = ranks.astype(np.uint32) + 1
        self.clock = int(stamps[slots].max(initial=1))

    def check_integrity(self, known_bits: int, now: int) -> None:
        """Raise AssertionError unless the table is consistent, masks only name ``known_bits``,
        and the LRU stamps are consistent: every key has one, none is ahead of the clock."""
        table = self.table
        table.check_integrity()
        slots = table.occupied()
        unknown = np.uint64(~known_bits & 0xFFFFFFFFFFFFFFFF)
        assert not np.any(table.cols["exact"][slots] & unknown), "exact mask names a lost replica"
        assert not np.any(table.cols["pred"][slots] & unknown), "pred mask names a lost replica"
        stamps = table.cols["stamp"][slots]
        assert np.all(stamps >= 1), "a key has no LRU stamp"
        assert np.all(stamps <= self.clock), "an LRU stamp is ahead of the clock"
        assert table.nbytes == table.capacity * SLOT_BYTES, "memory accounting is off"
        assert table.capacity <= table.max_buckets * BUCKET_SLOTS, "table is over its cap"
