"""A CheckpointTensor reads exactly the block it was narrowed to, and nothing before load()."""

from __future__ import annotations

import pytest
import torch

from worker.errors import ModelLoadError
from worker.model.weights import CheckpointTensor, copy_weight


def test_narrowing_twice_reads_only_the_inner_block() -> None:
    full = torch.arange(60.0).reshape(6, 10)
    reads: list[tuple[slice, ...]] = []

    def read(index: tuple[slice, ...]) -> torch.Tensor:
        reads.append(index)
        return full[index]

    block = CheckpointTensor.whole(read, full.shape).narrow(0, 2, 3).narrow(1, 4, 5).narrow(0, 1, 2)
    assert block.shape == (2, 5) and reads == []
    assert torch.equal(block.load(), full[3:5, 4:9])
    assert reads == [(slice(3, 5), slice(4, 9))]


def test_narrowing_past_the_end_is_a_load_error() -> None:
    tensor = CheckpointTensor.of(torch.zeros(4, 4)).narrow(0, 2, 2)
    with pytest.raises(ModelLoadError, match=r"cannot take \[1, 3\) of dimension 0 of shape"):
        tensor.narrow(0, 1, 2)


def test_copy_weight_names_both_shapes_and_converts_dtype() -> None:
    target = torch.empty(2, 3, dtype=torch.bfloat16)
    copy_weight(target, CheckpointTensor.of(torch.ones(2, 3)))
    assert torch.equal(target, torch.ones(2, 3, dtype=torch.bfloat16))
    with pytest.raises(ModelLoadError, match=r"expected \[2, 3\], got \[3, 2\]"):
        copy_weight(target, CheckpointTensor.of(torch.ones(3, 2)))
