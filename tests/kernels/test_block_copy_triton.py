"""The Triton KV block gather/scatter moves exactly the bytes its reference moves."""

from __future__ import annotations

import pytest
import torch

from kernels.block_copy_ref import gather_blocks_ref, scatter_blocks_ref
from kernels.block_copy_triton import gather_blocks_triton, scatter_blocks_triton
from tests.kernels.helpers import DEVICE, DTYPES, randn

# block_size 16, 2 KV heads, head_dim 24: a block is 768 elements per side.
SHAPE = (2, 9, 16, 2, 24)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_and_scatter_equal_the_reference(dtype: torch.dtype) -> None:
    source = randn(SHAPE, dtype, seed=17)
    ids = torch.tensor([7, 0, 4, 8], device=DEVICE)
    buffer = gather_blocks_triton(source, ids)
    assert torch.equal(buffer, gather_blocks_ref(source, ids))

    target = randn(SHAPE, dtype, seed=18)
    expected = target.clone()
    scatter_blocks_triton(buffer, target, ids.flip(0))
    scatter_blocks_ref(buffer, expected, ids.flip(0))
    assert torch.equal(target, expected)


def test_gather_of_no_blocks_is_empty() -> None:
    source = randn(SHAPE, torch.float32, seed=19)
    buffer = gather_blocks_triton(source, torch.tensor([], dtype=torch.long, device=DEVICE))
    assert buffer.shape == (0, 2, *SHAPE[2:])
