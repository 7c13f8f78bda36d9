"""A compact hash table from nonzero int64 keys to numpy columns: bucketized cuckoo hashing."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

BUCKET_SLOTS = 16
_SHIFT = BUCKET_SLOTS.bit_length() - 1
MAX_KICKS = 500
_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_MIX = 0x9E3779B97F4A7C15  # odd: multiplying by it spreads every key bit into the high half
_MIX_INT64 = np.int64(_MIX - (1 << 64))

Int64Array = NDArray[np.int64]


def _aligned_zeros(count: int) -> Int64Array:
    # Buckets start on 64-byte cache lines, so a lookup touches 2 lines per bucket, not 3.
    raw = np.zeros(count + 8, dtype=np.int64)
    start = (-raw.ctypes.data % 64) // 8
    return raw[start : start + count]


class CuckooTable:
    """Each key lives in one of two buckets of 16 slots, picked by the two halves of the key
    multiplied by an odd constant:

        keys:  [ bucket 0: k k 0 k ... k | bucket 1: k 0 0 k ... | ... ]   0 = empty slot
        cols:  one numpy array per column, same slot layout

    A batch of lookups is a handful of vectorized numpy operations over 2 x 16 candidates per
    key. A new key goes to the emptier of its buckets, which keeps buckets evenly filled, so
    cuckoo walks (displacing a key to its other bucket) stay rare up to ``max_load`` = 90 %; the
    table grows by ``growth`` (12.5 %, not 2x) up to ``max_buckets``. Both bound the slack per
    entry: the point of the structure is a few tens of bytes per key, not a Python dict's ~100.

    A slot index stays valid until the next insert (a cuckoo walk moves other keys) or rebuild.
    """

    def __init__(
        self,
        columns: Mapping[str, DTypeLike],
        num_buckets: int,
        max_buckets: int,
        max_load: float = 0.9,
        growth: float = 1.125,
        seed: int = 0,
    ) -> None:
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets}")
        self.max_buckets = max_buckets
        self.max_load = max_load
        self.growth = growth
        self._dtypes = {name: np.dtype(dtype) for name, dtype in columns.items()}
        self._rng = random.Random(seed)
        self._shuffle = np.random.default_rng(seed)
        self.dropped: list[int] = []  # keys a failed cuckoo walk had to leave out
        self._allocate(min(num_buckets, max_buckets))

    def _allocate(self, num_buckets: int) -> None:
        self.num_buckets = num_buckets
        slots = num_buckets * BUCKET_SLOTS
        self.keys: Int64Array = _aligned_zeros(slots)
        self.cols: dict[str, NDArray[Any]] = {
            name: np.zeros(slots, dtype=dtype) for name, dtype in self._dtypes.items()
        }
        self.count = 0

    @classmethod
    def slot_bytes(cls, columns: Mapping[str, DTypeLike]) -> int:
        return 8 + sum(np.dtype(dtype).itemsize for dtype in columns.values())

    @property
    def capacity(self) -> int:
        return self.num_buckets * BUCKET_SLOTS

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + sum(col.nbytes for col in self.cols.values())

    def __len__(self) -> int:
        return self.count

    def has_room(self, extra: int) -> bool:
        return self.count + extra <= self.max_load * self.capacity

    # -- lookups -------------------------------------------------------------------------------

    def buckets(self, keys: Int64Array) -> Int64Array:
        """Both candidate buckets of each key, shape (n, 2)."""
        # "fastrange": (32-bit half * num_buckets) >> 32 maps onto any bucket count, which is
        # what lets the table grow by 12.5 % instead of doubling. Column 0 comes from the low
        # half of the mixed key (little-endian), column 1 from the high half. int64 arithmetic
        # wraps like uint64 and keeps the result an index type.
        halves = (keys * _MIX_INT64).view(np.uint32).reshape(len(keys), 2).astype(np.int64)
        return (halves * self.num_buckets) >> 32

    def buckets_of(self, key: int) -> tuple[int, int]:
        mixed, count = (key * _MIX) & _M64, self.num_buckets
        return ((mixed & _M32) * count) >> 32, ((mixed >> 32) * count) >> 32

    def find(self, keys: Int64Array) -> Int64Array:
        """Slot of each key, -1 where absent."""
        rows, slots = self.find_present(keys)
        found = np.full(len(keys), -1, dtype=np.int64)
        found[rows] = slots
        return found

    def find_present(self, keys: Int64Array) -> tuple[Int64Array, Int64Array]:
        """(positions in ``keys``, slots) of the keys that are present."""
        # take() rather than fancy indexing: several times faster on small batches.
        buckets = self.buckets(keys)
        candidates = self.keys.reshape(-1, BUCKET_SLOTS).take(buckets, axis=0)
        hits = np.flatnonzero(candidates.reshape(len(keys), 2 * BUCKET_SLOTS) == keys[:, None])
        slots = (buckets.reshape(-1).take(hits >> _SHIFT) << _SHIFT) + (hits & (BUCKET_SLOTS - 1))
        return hits >> (_SHIFT + 1), slots

    def find_one(self, key: int) -> int:
        for bucket in self.buckets_of(key):
            start = bucket << _SHIFT
            row = self.keys[start : start + BUCKET_SLOTS].tolist()
            if key in row:
                return start + row.index(key)
        return -1

    # -- inserts -------------------------------------------------------------------------------

    def insert_one(self, key: int, values: Mapping[str, int]) -> None:
        """Insert an absent key. Room must have been made (``has_room``). Find its slot after."""
        first, second = self.buckets_of(key)
        row_a = self.keys[first << _SHIFT : (first + 1) << _SHIFT].tolist()
        row_b = self.keys[second << _SHIFT : (second + 1) << _SHIFT].tolist()
        free_a, free_b = row_a.count(0), row_b.count(0)
        if free_a or free_b:
            # The emptier bucket: two choices keep buckets evenly filled, which is what makes
            # high loads reachable without long cuckoo walks.
            slot = (
                (first << _SHIFT) + row_a.index(0)
                if free_a >= free_b
                else (second << _SHIFT) + row_b.index(0)
            )
            self.keys[slot] = key
            for name, value in values.items():  # empty slots hold zeros already
                self.cols[name][slot] = value
            self.count += 1
            return
        self._walk(key, {name: values.get(name, 0) for name in self._dtypes})

    def _walk(self, key: int, values: dict[str, int]) -> None:
        # Both buckets are full: displace a random occupant to its other bucket, and so on.
        for _ in range(MAX_KICKS):
            bucket = self._rng.choice(self.buckets_of(key))
            slot = (bucket << _SHIFT) + self._rng.randrange(BUCKET_SLOTS)
            victim = int(self.keys[slot]), {n: int(c[slot]) for n, c in self.cols.items()}
            self._write(slot, key, values)
            key, values = victim
            for bucket in self.buckets_of(key):
                start = bucket << _SHIFT
                row = self.keys[start : start + BUCKET_SLOTS].tolist()
                if 0 in row:
                    self._write(start + row.index(0), key, values)
                    self.count += 1
                    return
        self.dropped.append(key)  # practically unreachable below ~97 % load

    def _write(self, slot: int, key: int, values: dict[str, int]) -> None:
        self.keys[slot] = key
        for name, value in values.items():
            self.cols[name][slot] = value

    def insert_many(
        self, keys: Int64Array, values: Mapping[str, NDArray[Any] | int] | None = None
    ) -> None:
        """Insert distinct absent keys, vectorized: each key goes to the emptier of its two
        buckets, or failing that to the other; the few left take ``insert_one``'s cuckoo walk.
        A big batch (a rebuild) goes in slices so that the emptiness it sees stays current."""
        values = values or {}
        columns = {
            name: np.broadcast_to(np.asarray(values.get(name, 0), dtype=dtype), keys.shape)
            for name, dtype in self._dtypes.items()
        }
        step = max(256, self.num_buckets)  # about a key per bucket per slice: fresh counts
        for start in range(0, len(keys), step):
            self._place(keys, columns, np.arange(start, min(len(keys), start + step)))

    def _place(
        self, keys: Int64Array, columns: dict[str, NDArray[Any]], pending: Int64Array
    ) -> None:
        rows = self.keys.reshape(-1, BUCKET_SLOTS)
        buckets = self.buckets(keys[pending])
        free = (rows.take(buckets.reshape(-1), axis=0) == 0).sum(axis=1).reshape(-1, 2)
        # The emptier bucket first; on a tie, a bit of the key picks (not always the first one,
        # which would fill first buckets like a one-choice table).
        tie = ((keys[pending] >> 17) & 1).astype(np.intp)
        choice = np.where(free[:, 0] == free[:, 1], tie, free[:, 1] > free[:, 0]).astype(np.intp)
        for _ in range(2):
            if not len(pending):
                break
            bucket = np.take_along_axis(buckets, choice[:, None], axis=1)[:, 0]
            order = np.argsort(bucket, kind="stable")
            pending, bucket, buckets = pending[order], bucket[order], buckets[order]
            choice = choice[order]
            rank = np.arange(len(bucket)) - np.searchsorted(bucket, bucket)
            free_seen = np.cumsum(rows.take(bucket, axis=0) == 0, axis=1)
            fits = rank < free_seen[:, -1]
            column = np.argmax(free_seen == (rank + 1)[:, None], axis=1)
            slots = (bucket[fits] << _SHIFT) + column[fits]
            placed = pending[fits]
            self.keys[slots] = keys[placed]
            for name, col in self.cols.items():
                col[slots] = columns[name][placed]
            self.count += len(placed)
            pending, buckets, choice = pending[~fits], buckets[~fits], 1 - choice[~fits]
        for index in pending.tolist():
            self.insert_one(
                int(keys[index]), {name: int(col[index]) for name, col in columns.items()}
            )

    # -- removal and resizing ------------------------------------------------------------------

    def delete(self, slots: Int64Array) -> None:
        slots = np.unique(slots)
        slots = slots[self.keys[slots] != 0]
        self.keys[slots] = 0
        for col in self.cols.values():
            col[slots] = 0
        self.count -= len(slots)

    def occupied(self) -> Int64Array:
        return np.flatnonzero(self.keys)

    def grow(self) -> bool:
        """Rebuild with ``growth`` times the buckets; False when already at ``max_buckets``."""
        if self.num_buckets >= self.max_buckets:
            return False
        target = max(self.num_buckets + 1, math.ceil(self.num_buckets * self.growth))
        self.rebuild(min(target, self.max_buckets))
        return True

    def rebuild(self, num_buckets: int) -> None:
        # In slot order, keys would arrive sorted by their new buckets too (fastrange is
        # monotone), and each slice of insert_many would pile onto a few buckets.
        slots = self._shuffle.permutation(self.occupied())
        keys = self.keys[slots]
        values = {name: col[slots] for name, col in self.cols.items()}
        self._allocate(num_buckets)
        self.insert_many(keys, values)

    def take_dropped(self) -> list[int]:
        dropped, self.dropped = self.dropped, []
        return dropped

    def check_integrity(self) -> None:
        """Raise AssertionError unless: the count is right, every key sits in one of its two
        buckets, no key is stored twice, and empty slots hold zero in every column."""
        slots = self.occupied()
        assert len(slots) == self.count, f"count {self.count}, {len(slots)} occupied slots"
        keys = self.keys[slots]
        buckets = self.buckets(keys)
        bucket = slots // BUCKET_SLOTS
        inside = (bucket == buckets[:, 0]) | (bucket == buckets[:, 1])
        assert np.all(inside), "a key is outside its buckets"
        assert len(np.unique(keys)) == len(keys), "a key is stored twice"
        empty = self.keys == 0
        for name, col in self.cols.items():
            assert len(col) == self.capacity, f"column {name} has the wrong length"
            assert not np.any(col[empty]), f"an empty slot holds a value in column {name}"
