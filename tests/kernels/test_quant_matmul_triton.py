"""The Triton weight-quantized matmul equals its reference, for int8 and fp8 weights.

fp8 weights run in the interpreter too: the kernel reads them as bytes and bit-casts them.
"""

from __future__ import annotations

import pytest
import torch

from kernels.quant_matmul_ref import quant_matmul_ref
from kernels.quant_matmul_triton import quant_matmul_triton
from tests.kernels.helpers import DEVICE, DTYPES, assert_close_to, randn
from worker.model.quantization import quantize_rows

WEIGHTS = ["int8", "fp8"]


def _quantized(n: int, k: int, weights: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    qweight, scale = quantize_rows(randn((n, k), torch.float32, seed).cpu(), weights)
    return qweight.to(DEVICE), scale.to(DEVICE)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "m, k, n",
    [(1, 256, 96), (5, 200, 70), (40, 130, 130)],
    ids=["decode", "ragged_k_and_n", "prefill"],
)
def test_quant_matmul_matches_reference(
    weights: str, dtype: torch.dtype, m: int, k: int, n: int
) -> None:
    # 200 and 130 fill neither a K block nor an N block; 40 rows take the prefill tile of 64.
    x = randn((m, k), dtype, seed=21)
    qweight, scale = _quantized(n, k, weights, seed=22)
    out = quant_matmul_triton(x, qweight, scale)
    assert out.shape == (m, n) and out.dtype == dtype
    assert_close_to(out, quant_matmul_ref(x.cpu(), qweight.cpu(), scale.cpu()), dtype)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_quant_matmul_of_a_strided_view_and_of_no_rows(weights: str) -> None:
    # The rows of a wider tensor, as the q/k/v split of a fused projection hands them on.
    x = randn((3, 96), torch.float32, seed=23)[:, :64]
    qweight, scale = _quantized(48, 64, weights, seed=24)
    out = quant_matmul_triton(x, qweight, scale)
    assert_close_to(out, quant_matmul_ref(x.cpu(), qweight.cpu(), scale.cpu()), torch.float32)
    assert quant_matmul_triton(x[:0], qweight, scale).shape == (0, 48)
