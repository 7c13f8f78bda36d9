"""The CPU path of the weight-quantized matmul (see quant_matmul_ref).

torch's int8-weight matmul converts the weight as it reads it instead of materialising a float
copy, and in bfloat16 it is fast: measured on a 2048 x 8192 layer, two cores, 3.6x faster than
dequantize-then-matmul at 1 row and still faster at 64. It runs there only, with K a multiple
of 16 (other widths computed NaN or crashed, torch 2.13). In float32 it was faster for a single
row only, and a tensor-parallel test whose ranks took that path aborted twice in many runs
("terminate called without an active exception"); in float16 its scales, which it takes in
``x``'s dtype, go subnormal for rows of small weights. Everything else, and fp8 (torch has no
fp8-weight kernel), multiplies by the raw 8-bit values converted to ``x``'s dtype (exact: every
int8 and e4m3 value is a bfloat16 and a float16) and scales after; float16 does both in float32,
since raw values of up to 127 (448 for fp8) times an activation pass its range where the true
result is small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.layout import unit_last_stride

_BF16_K_MULTIPLE = 16


def quant_matmul_cpu(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` [M, K] times the int8 or float8_e4m3fn ``qweight`` [N, K] scaled by ``scale`` [N]
    per row → [M, N] in ``x``'s dtype."""
    if qweight.dtype == torch.int8 and _int8_kernel_applies(x):
        return torch._weight_int8pack_mm(unit_last_stride(x), qweight, scale.to(x.dtype))
    if x.dtype == torch.float16:
        return (F.linear(x.float(), qweight.float()) * scale.float()).to(x.dtype)
    return F.linear(x, qweight.to(x.dtype)) * scale.to(x.dtype)


def _int8_kernel_applies(x: torch.Tensor) -> bool:
    return x.dtype == torch.bfloat16 and x.shape[-1] % _BF16_K_MULTIPLE == 0
