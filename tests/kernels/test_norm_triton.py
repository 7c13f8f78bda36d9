"""Triton RMSNorm and fused add + RMSNorm equal their references."""

from __future__ import annotations

import pytest
import torch

from kernels.norm_ref import fused_add_rms_norm_ref, rms_norm_ref
from kernels.norm_triton import fused_add_rms_norm_triton, rms_norm_triton
from tests.kernels.helpers import DTYPES, assert_close_to, randn, reference

EPS = 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 40), (3, 5, 24)], ids=["rows", "heads"])
def test_rms_norm_matches_reference(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    # (3, 5, 24) is a q/k-norm over each head (Qwen3); 40 columns do not fill a power of two.
    x = randn(shape, dtype, seed=7) * 3
    weight = randn(shape[-1:], dtype, seed=8)
    out = rms_norm_triton(x, weight, EPS)
    assert out.shape == x.shape and out.dtype == dtype
    # The reference in the same dtype rounds where the kernel rounds; compare to that.
    assert_close_to(out, rms_norm_ref(x.cpu(), weight.cpu(), EPS), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_matches_reference(dtype: torch.dtype) -> None:
    x = randn((9, 48), dtype, seed=9)
    residual = randn((9, 48), dtype, seed=10) * 4
    weight = randn((48,), dtype, seed=11)
    out, summed = fused_add_rms_norm_triton(x, residual, weight, EPS)
    expected_out, expected_summed = fused_add_rms_norm_ref(
        x.cpu(), residual.cpu(), weight.cpu(), EPS
    )
    assert torch.equal(summed.cpu(), expected_summed)
    assert_close_to(out, expected_out, dtype)


def test_rms_norm_of_a_strided_view_and_float32_weight() -> None:
    # A half-precision input with a float32 weight promotes, exactly as the reference does.
    x = randn((6, 64), torch.float16, seed=12)[:, :32]
    weight = randn((32,), torch.float32, seed=13)
    out = rms_norm_triton(x, weight, EPS)
    assert out.dtype == torch.float32
    assert_close_to(out, reference(rms_norm_ref, x.cpu().half(), weight, EPS), torch.float16)
