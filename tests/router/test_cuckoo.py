"""The cuckoo table behaves like a dict from int64 keys to column values."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from router.cuckoo import CuckooTable

keys = st.integers(-(2**63), 2**63 - 1).filter(lambda k: k != 0)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["one", "many", "delete"]), st.lists(keys, max_size=40)),
        max_size=40,
    )
)
def test_table_matches_a_dict_through_inserts_deletes_and_growth(
    ops: list[tuple[str, list[int]]],
) -> None:
    table = CuckooTable({"v": np.int64}, num_buckets=1, max_buckets=1 << 12)
    model: dict[int, int] = {}
    for op, batch in ops:
        if op == "delete":
            slots = table.find(np.array(batch, dtype=np.int64))
            table.delete(slots[slots >= 0])
            for key in batch:
                model.pop(key, None)
            continue
        new = [k for k in dict.fromkeys(batch) if k not in model]
        while not table.has_room(len(new)):
            assert table.grow()
        if op == "one":
            for key in new:
                table.insert_one(key, {"v": key // 2})
        else:
            array = np.array(new, dtype=np.int64)
            table.insert_many(array, {"v": array // 2})
        model.update((k, k // 2) for k in new)
        table.check_integrity()
    assert not table.dropped
    assert len(table) == len(model)
    probe = np.array([*model, 12345, -7], dtype=np.int64)
    slots = table.find(probe)
    for key, slot in zip(probe.tolist(), slots.tolist(), strict=True):
        assert (slot >= 0) == (key in model)
        assert slot < 0 or table.cols["v"][slot] == model[key]
        assert table.find_one(key) == slot


def test_table_fills_to_its_max_load_without_dropping_keys() -> None:
    table = CuckooTable({"v": np.uint64}, num_buckets=4096, max_buckets=4096)
    rng = np.random.default_rng(0)
    batch = np.unique(rng.integers(1, 2**63, int(table.capacity * table.max_load)))
    for chunk in np.array_split(batch, 50):
        table.insert_many(chunk)
    assert not table.dropped
    assert len(table) == len(batch)
    assert np.all(table.find(batch) >= 0)
    assert not table.grow()  # at max_buckets
    table.check_integrity()
