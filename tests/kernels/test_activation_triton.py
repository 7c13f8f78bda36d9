"""Triton SiLU-and-mul equals the reference."""

from __future__ import annotations

import pytest
import torch

from kernels.activation_ref import silu_and_mul_ref
from kernels.activation_triton import silu_and_mul_triton
from tests.kernels.helpers import DTYPES, assert_close_to, randn, reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 2 * 37), (2, 3, 2 * 1100)], ids=["odd", "two_blocks"])
def test_silu_and_mul_matches_reference(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = randn(shape, dtype, seed=15) * 3
    out = silu_and_mul_triton(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    assert_close_to(out, reference(silu_and_mul_ref, x), dtype)
