"""The Triton KV store writes exactly what the reference writes, and nothing at slot -1."""

from __future__ import annotations

import pytest
import torch

from kernels.kv_store_ref import store_kv_ref
from kernels.kv_store_triton import store_kv_triton
from tests.kernels.helpers import DEVICE, DTYPES, randn

NUM_BLOCKS, BLOCK_SIZE, HEAD_DIM = 5, 16, 24


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads", [1, 3])
def test_store_by_slot_equals_reference_and_skips_minus_one(
    dtype: torch.dtype, kv_heads: int
) -> None:
    # Slots in shuffled blocks, one in a block's last position, two padding tokens (-1).
    slots = torch.tensor([37, -1, 3, 79, 15, 16, -1, 50], device=DEVICE)
    num_tokens = slots.numel()
    # Key and value are views into a fused kv row, as the model hands them over.
    kv = randn((num_tokens, 2 * kv_heads * HEAD_DIM), dtype, seed=3)
    key = kv[:, : kv_heads * HEAD_DIM].view(num_tokens, kv_heads, HEAD_DIM)
    value = kv[:, kv_heads * HEAD_DIM :].view(num_tokens, kv_heads, HEAD_DIM)
    cache = randn((2, NUM_BLOCKS, BLOCK_SIZE, kv_heads, HEAD_DIM), dtype, seed=4)
    expected = cache.clone()

    store_kv_triton(key, value, cache, slots)
    store_kv_ref(key, value, expected, slots)

    assert torch.equal(cache, expected)
    untouched = torch.ones(NUM_BLOCKS * BLOCK_SIZE, dtype=torch.bool, device=DEVICE)
    untouched[slots[slots >= 0]] = False
    before = randn((2, NUM_BLOCKS, BLOCK_SIZE, kv_heads, HEAD_DIM), dtype, seed=4)
    flat = cache.view(2, -1, kv_heads, HEAD_DIM)
    assert torch.equal(flat[:, untouched], before.view(2, -1, kv_heads, HEAD_DIM)[:, untouched])


def test_store_casts_to_the_cache_dtype() -> None:
    key = randn((3, 2, HEAD_DIM), torch.float32, seed=5)
    value = randn((3, 2, HEAD_DIM), torch.float32, seed=6)
    slots = torch.tensor([0, 17, 40], device=DEVICE)
    cache = torch.zeros(
        (2, NUM_BLOCKS, BLOCK_SIZE, 2, HEAD_DIM), dtype=torch.float16, device=DEVICE
    )
    expected = cache.clone()
    store_kv_triton(key, value, cache, slots)
    store_kv_ref(key, value, expected, slots)
    assert torch.equal(cache, expected)
