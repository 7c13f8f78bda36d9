"""The prefixes a replica's cache must hold for the traffic this router sends it."""

from __future__ import annotations

from collections import OrderedDict


class CacheFootprint:
    """The prefixes (by first-block key) this router sent a replica in the last ``window_s``,
    and the blocks each spans: what the replica's cache must keep to serve them again. A
    prefix placed where the footprint already fills the cache evicts others that are still in
    use; placed where there is room, it evicts only what nobody asked for lately."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._prefixes: OrderedDict[int, tuple[int, float]] = OrderedDict()  # oldest first
        self.blocks = 0

    def holds(self, first_key: int) -> bool:
        return first_key in self._prefixes

    def overflow(self, first_key: int, num_blocks: int, capacity: int, now: float) -> int:
        """Blocks of prefixes in use that a prompt of ``num_blocks`` blocks would push out of a
        cache of ``capacity`` blocks (0 for an unknown capacity, or a prefix already here)."""
        if not capacity or self.blocks + num_blocks <= capacity:
            return 0
        self.expire(now)
        if first_key in self._prefixes:
            return 0
        return min(max(self.blocks + num_blocks - capacity, 0), num_blocks)

    def add(self, first_key: int, num_blocks: int, now: float) -> None:
        old = self._prefixes.pop(first_key, None)
        blocks = max(num_blocks, old[0] if old else 0)
        self.blocks += blocks - (old[0] if old else 0)
        self._prefixes[first_key] = (blocks, now)
        self.expire(now)

    def expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._prefixes:
            key, (blocks, seen) = next(iter(self._prefixes.items()))
            if seen > horizon:
                return
            del self._prefixes[key]
            self.blocks -= blocks

    def check_integrity(self) -> None:
        assert self.blocks == sum(b for b, _ in self._prefixes.values()), "block total is off"
        times = [seen for _, seen in self._prefixes.values()]
        assert times == sorted(times), "prefixes are out of order"
