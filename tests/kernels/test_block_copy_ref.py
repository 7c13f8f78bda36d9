"""The KV block gather/scatter reference (transfers between replicas) round-trips byte for byte."""

from __future__ import annotations

import pytest
import torch

from kernels.block_copy_ref import gather_blocks_ref, scatter_blocks_ref

# block_size 16, 2 KV heads, head_dim 24.
SHAPE = (2, 9, 16, 2, 24)


def test_round_trip_is_byte_equal_and_touches_only_those_blocks() -> None:
    source = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    ids = torch.tensor([7, 0, 4, 8])
    buffer = gather_blocks_ref(source, ids)
    assert buffer.shape == (4, 2, *SHAPE[2:]) and buffer.is_contiguous()
    # Row i holds block ids[i]: its keys, then its values.
    assert torch.equal(buffer[1, 0], source[0, 0]) and torch.equal(buffer[1, 1], source[1, 0])

    # Into other block ids of another cache, as a receiving replica would.
    target = torch.zeros(SHAPE, dtype=torch.bfloat16)
    target_ids = torch.tensor([1, 2, 3, 5])
    scatter_blocks_ref(buffer, target, target_ids)
    assert torch.equal(target[:, target_ids].view(torch.int16), source[:, ids].view(torch.int16))
    assert not target[:, torch.tensor([0, 4, 6, 7, 8])].any()


def test_scatter_rejects_a_buffer_of_the_wrong_shape() -> None:
    cache = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="block buffer"):
        scatter_blocks_ref(torch.zeros(3, 2, 16, 2, 24), cache, torch.tensor([0, 1]))
