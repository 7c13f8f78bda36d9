"""The CPU path of the weight-quantized matmul (torch's int8-weight matmul; fp8 dequantized)
equals the reference, and kernels.ops.quant_linear takes it on CPU tensors."""

from __future__ import annotations

import pytest
import torch

from kernels import ops
from kernels.quant_matmul_cpu import quant_matmul_cpu
from kernels.quant_matmul_ref import quant_matmul_ref
from tests.kernels.helpers import assert_close_to
from worker.model.quantization import quantize_rows

WEIGHTS = ["int8", "fp8"]
# bfloat16 computes natively on CPU; the CPU path scales in x's dtype, which the bf16
# tolerance covers (a scale rounds by at most 2^-9 relative).
CPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 6])
@pytest.mark.parametrize("k", [64, 72])
def test_cpu_path_matches_reference(weights: str, dtype: torch.dtype, m: int, k: int) -> None:
    # torch's bfloat16 int8 kernel computes NaN for a K of 72 (not a multiple of 16).
    x = _randn((m, 2 * k), seed=31).to(dtype)[:, :k]  # rows of a wider tensor
    qweight, scale = quantize_rows(_randn((40, k), seed=32), weights)
    out = quant_matmul_cpu(x, qweight, scale)
    assert out.shape == (m, 40) and out.dtype == dtype
    assert_close_to(out, quant_matmul_ref(x, qweight, scale), dtype)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_quant_linear_on_cpu_keeps_leading_dimensions_and_adds_the_bias(weights: str) -> None:
    x = _randn((2, 3, 16), seed=33)
    qweight, scale = quantize_rows(_randn((8, 16), seed=34), weights)
    bias = _randn((8,), seed=35)
    out = ops.quant_linear(x, qweight, scale, bias)
    expected = quant_matmul_ref(x.reshape(6, 16), qweight, scale).view(2, 3, 8) + bias
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("m", [1, 2])
def test_large_activations_stay_finite_in_float16(weights: str, m: int) -> None:
    """Raw 8-bit values (up to 127, or 448) times a large activation pass float16's range;
    the scaled weight times it does not."""
    weight = _randn((8, 64), seed=36) * 0.02
    weight[:, 5] = 0.1  # every row's largest value: its raw 8-bit value is the format's max
    qweight, scale = quantize_rows(weight, weights)
    x = torch.zeros((m, 64), dtype=torch.float16)
    x[:, 5] = 600.0
    out = quant_matmul_cpu(x, qweight, scale)
    assert torch.isfinite(out).all()
    assert_close_to(out, quant_matmul_ref(x, qweight, scale), torch.float16)
