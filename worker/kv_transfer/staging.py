"""A fixed arena carved into byte ranges, one per key: where a transport stages blocks packed
contiguously, so that a transfer is one region per layer rather than two per block."""

from __future__ import annotations

import bisect
import itertools


class StagingArena:
    """First-fit over ``size`` bytes; ranges are aligned to ``alignment`` bytes."""

    def __init__(self, size: int, alignment: int = 256) -> None:
        self.size = size
        self.alignment = alignment
        self._taken: dict[str, tuple[int, int]] = {}  # key -> (offset, length)
        self._starts: list[int] = []  # sorted offsets of the taken ranges

    @property
    def num_taken(self) -> int:
        return len(self._taken)

    def allocate(self, key: str, length: int) -> int | None:
        """A range of ``length`` bytes for ``key`` (which must hold none): its offset, or None
        if no gap is large enough."""
        assert key not in self._taken, f"{key} already holds a range"
        length = -(-length // self.alignment) * self.alignment
        by_start = {offset: n for offset, n in self._taken.values()}
        cursor = 0
        for start in self._starts:
            if start - cursor >= length:
                break
            cursor = start + by_start[start]
        if cursor + length > self.size:
            return None
        self._taken[key] = (cursor, length)
        bisect.insort(self._starts, cursor)
        return cursor

    def free(self, key: str) -> bool:
        taken = self._taken.pop(key, None)
        if taken is None:
            return False
        self._starts.remove(taken[0])
        return True

    def check_integrity(self) -> None:
        ranges = sorted(self._taken.values())
        assert [offset for offset, _ in ranges] == self._starts, "start index is stale"
        for (a, n), (b, _) in itertools.pairwise(ranges):
            assert a + n <= b, f"ranges at {a} and {b} overlap"
        assert not ranges or ranges[-1][0] + ranges[-1][1] <= self.size, "a range overruns"
