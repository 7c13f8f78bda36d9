"""Devices, dtypes, tolerances and paged batches shared by the kernel tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

from kernels.attention_metadata import PagedAttentionMetadata
from tests.worker.model.paging import BLOCK_SIZE, PagedSequence, build_step, shuffled_block_ids

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter runs kernels on CPU tensors; compiled kernels need CUDA ones.
DEVICE = torch.device("cpu" if INTERPRETING else "cuda")

DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(
        torch.bfloat16,
        id="bf16",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(INTERPRETING, reason="bf16 needs compiled kernels on a CUDA GPU"),
        ],
    ),
]

# (atol, rtol) of a kernel against its reference: a few units in the last place of the dtype.
TOLERANCE = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """``actual`` (any device) within ``dtype``'s tolerance of ``expected``."""
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.cpu().float(), expected.cpu().float(), atol=atol, rtol=rtol)


def reference(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn`` run on float32 CPU copies of the tensor arguments (others passed through)."""
    return fn(*(a.cpu().float() if _is_float(a) else a for a in args))


def _is_float(a: Any) -> bool:
    return isinstance(a, torch.Tensor) and a.is_floating_point()


def randn(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Standard-normal values made on CPU (same on every device), then moved to ``DEVICE``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype=dtype, device=DEVICE)


def paged_step(work: list[tuple[int, int]]) -> tuple[int, PagedAttentionMetadata]:
    """Metadata of one step in which sequence ``i`` has ``work[i] = (cached, query_len)``: that
    many tokens already in the cache and that many queries now. Blocks are shuffled, with a few
    spare. Returns ``(num_blocks, meta)``."""
    needed = [-(-(cached + query_len) // BLOCK_SIZE) for cached, query_len in work]
    num_blocks = sum(needed) + 3
    free = shuffled_block_ids(num_blocks)
    sequences = []
    for (cached, _), count in zip(work, needed, strict=True):
        seq, free = PagedSequence(free[:count]), free[count:]
        seq.num_cached = cached
        sequences.append(seq)
    _, meta = build_step([(seq, q) for seq, (_, q) in zip(sequences, work, strict=True)])
    return num_blocks, meta
