"""The staging arena: ranges never overlap, freed space is reused, a full arena says so."""

from __future__ import annotations

import itertools
import random

from worker.kv_transfer.staging import StagingArena


def test_ranges_are_aligned_disjoint_and_reused_after_free() -> None:
    arena = StagingArena(1024, alignment=64)
    assert arena.allocate("a", 100) == 0
    assert arena.allocate("b", 64) == 128
    assert arena.allocate("c", 1024) is None  # no gap that large
    assert arena.free("a") and not arena.free("a")
    assert arena.allocate("d", 128) == 0  # the freed gap, first fit
    arena.check_integrity()


def test_random_allocations_and_frees_keep_the_arena_consistent() -> None:
    rng = random.Random(0)
    arena = StagingArena(1 << 16, alignment=16)
    live: dict[str, tuple[int, int]] = {}
    for step in range(2000):
        if live and rng.random() < 0.45:
            key = rng.choice(sorted(live))
            assert arena.free(key)
            del live[key]
        else:
            length = rng.randrange(1, 4096)
            offset = arena.allocate(str(step), length)
            if offset is not None:
                live[str(step)] = (offset, length)
        arena.check_integrity()
        spans = sorted(live.values())
        for (a, n), (b, _) in itertools.pairwise(spans):
            assert a + n <= b
    assert arena.num_taken == len(live)
