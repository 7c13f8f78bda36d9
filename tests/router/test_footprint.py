"""A replica's cache footprint: the prefixes this router sent it lately, and their blocks."""

from __future__ import annotations

import dataclasses
import random

from router.footprint import CacheFootprint
from tests.router.test_policy import make_router, report, tokens


def test_prefixes_count_once_and_leave_after_the_window() -> None:
    footprint = CacheFootprint(window_s=10.0)
    footprint.add(1, 8, now=0.0)
    footprint.add(2, 5, now=4.0)
    footprint.add(1, 6, now=6.0)  # the same prefix again: counted once, at its longest
    assert footprint.blocks == 13 and footprint.holds(1)
    footprint.expire(now=14.5)  # prefix 2 was last sent at 4.0
    assert footprint.blocks == 8 and not footprint.holds(2)
    footprint.expire(now=16.5)
    assert footprint.blocks == 0
    footprint.check_integrity()


def test_only_a_prefix_not_yet_in_the_footprint_can_overflow_the_cache() -> None:
    footprint = CacheFootprint(window_s=10.0)
    footprint.add(1, 60, now=0.0)
    footprint.add(2, 30, now=1.0)
    assert footprint.overflow(3, 20, capacity=100, now=2.0) == 10  # 90 + 20 over 100
    assert footprint.overflow(3, 5, capacity=100, now=2.0) == 0
    assert footprint.overflow(2, 30, capacity=100, now=2.0) == 0  # already held there
    assert footprint.overflow(3, 20, capacity=0, now=2.0) == 0  # capacity not reported
    assert footprint.overflow(3, 20, capacity=100, now=10.5) == 0  # prefix 1 has expired


def test_a_new_prefix_goes_where_it_evicts_no_prefix_in_use() -> None:
    rng = random.Random(7)
    router = make_router(2, margin_rel=0.0)
    for replica in router.replica_ids:
        router.on_load_report(replica, dataclasses.replace(report(), num_blocks=100), now=0.0)
    for i in range(9):  # 90 blocks of prefixes in use on r0
        decision = router.choose(tokens(rng, 160), now=0.0)
        router.record(dataclasses.replace(decision, replica_id="r0"), f"q{i}", now=0.0)
        router.release("r0", f"q{i}")
    fresh = tokens(rng, 320)  # 20 blocks: on r0 it would push 10 blocks in use out
    assert router.choose(fresh, now=1.0).replica_id == "r1"
    # Once those prefixes have not been sent for the footprint window, r0 has room again.
    later = 1.0 + router.config.footprint_window_s
    assert {router.choose(fresh, now=later).replica_id for _ in range(40)} == {"r0", "r1"}
    router.check_integrity(now=later)
