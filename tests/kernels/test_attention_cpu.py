"""The batched CPU attention path computes exactly what the per-sequence reference does."""

from __future__ import annotations

import pytest
import torch

from kernels.attention_cpu import paged_attention_cpu
from kernels.attention_metadata import PagedAttentionMetadata
from kernels.attention_ref import paged_attention_ref

BLOCK = 4


def _metadata(
    rows: list[tuple[int, int, list[int]]], block_size: int = BLOCK
) -> PagedAttentionMetadata:
    """rows: (query_len, seq_len, block ids) per sequence."""
    starts = [0]
    for query_len, _, _ in rows:
        starts.append(starts[-1] + query_len)
    width = max(len(blocks) for _, _, blocks in rows)
    table = [blocks + [0] * (width - len(blocks)) for _, _, blocks in rows]
    return PagedAttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor([s for _, s, _ in rows], dtype=torch.int32),
        block_table=torch.tensor(table, dtype=torch.int32),
        slot_mapping=torch.zeros(starts[-1], dtype=torch.int64),
        query_lens_host=[q for q, _, _ in rows],
        seq_lens_host=[s for _, s, _ in rows],
        block_size=block_size,
    )


def _batch(seed: int, shared_groups: int) -> list[tuple[int, int, list[int]]]:
    """Decode rows in ``shared_groups`` groups sharing leading blocks, singletons, and prefill
    chunks on top of a cached prefix; all block ids distinct except the shared ones."""
    gen = torch.Generator().manual_seed(seed)
    free = torch.randperm(200, generator=gen).tolist()
    rows = []
    for _ in range(shared_groups):
        prefix = [free.pop() for _ in range(int(torch.randint(1, 4, (1,), generator=gen)))]
        for _ in range(int(torch.randint(2, 5, (1,), generator=gen))):
            seq_len = len(prefix) * BLOCK + int(torch.randint(1, 11, (1,), generator=gen))
            own = [free.pop() for _ in range(-(-seq_len // BLOCK) - len(prefix))]
            rows.append((1, seq_len, prefix + own))
    for query_len, seq_len in ((1, 7), (1, 1), (5, 5), (3, 14), (1, 9)):
        rows.append((query_len, seq_len, [free.pop() for _ in range(-(-seq_len // BLOCK))]))
    order = torch.randperm(len(rows), generator=gen).tolist()
    return [rows[i] for i in order]


@pytest.mark.parametrize("kv_heads, heads", [(4, 4), (2, 4), (1, 4)])
@pytest.mark.parametrize("shared_groups", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_path_equals_reference(
    kv_heads: int, heads: int, shared_groups: int, dtype: torch.dtype
) -> None:
    rows = _batch(seed=kv_heads * 10 + shared_groups, shared_groups=shared_groups)
    meta = _metadata(rows)
    torch.manual_seed(0)
    kv_cache = torch.randn(2, 200, BLOCK, kv_heads, 16).to(dtype)
    query = torch.randn(int(meta.query_start_loc[-1]), heads, 16).to(dtype)
    expected = paged_attention_ref(query, kv_cache, meta, scale=0.25)
    got = paged_attention_cpu(query, kv_cache, meta, scale=0.25)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_shared_prefix_groups_are_found() -> None:
    rows = _batch(seed=1, shared_groups=3)
    plan = _metadata(rows).decode_plan
    assert plan is not None
    assert len(plan.shared) == 3
    # A lone decode row shares nothing, even with itself.
    lone = _metadata([(1, 9, [5, 6, 7])]).decode_plan
    assert lone is not None and lone.shared == []


def test_shared_blocks_stop_before_every_query() -> None:
    # Two rows hold the same three blocks, but one's query lies in the third block: only two
    # blocks may be attended as the shared part.
    plan = _metadata([(1, 12, [1, 2, 3]), (1, 10, [1, 2, 3])]).decode_plan
    assert plan is not None
    (group,) = plan.shared
    assert group.blocks.tolist() == [1, 2]
