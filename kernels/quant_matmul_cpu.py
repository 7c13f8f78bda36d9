"""The CPU path of the weight-quantized matmul (see quant_matmul_ref).

torch's int8-weight matmul converts the weight as it reads it instead of materialising a float
copy, but only its bfloat16 kernel is fast; in float32 and float16 its time grows with every row
of ``x``. Measured on a 2048 x 8192 layer, two cores: bfloat16 3.6x faster than
dequantize-then-matmul at 1 row and still faster at 64; float32 3x faster at 1 row, 3x slower
at 16 and 7x at 64. So it runs in bfloat16, and for a single row in any dtype; everything else,
and fp8 (torch has no fp8-weight kernel), is dequantized to ``x``'s dtype first (exact: every
int8 and e4m3 value is a bfloat16 and a float16). In bfloat16 the kernel also needs K to be a
multiple of 16: other widths computed NaN or crashed (torch 2.13).

Both scale in ``x``'s dtype, the only one the int8 kernel takes: in bfloat16 that rounds each
scale by up to 2^-9 relative, below the int8 rounding of the weights themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.layout import unit_last_stride

_BF16_K_MULTIPLE = 16


def quant_matmul_cpu(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` [M, K] times the int8 or float8_e4m3fn ``qweight`` [N, K] scaled by ``scale`` [N]
    per row → [M, N] in ``x``'s dtype."""
    scale = scale.to(x.dtype)
    if qweight.dtype == torch.int8 and _int8_kernel_is_faster(x):
        return torch._weight_int8pack_mm(unit_last_stride(x), qweight, scale)
    return F.linear(x, qweight.to(x.dtype)) * scale


def _int8_kernel_is_faster(x: torch.Tensor) -> bool:
    if x.dtype == torch.bfloat16:
        return x.shape[-1] % _BF16_K_MULTIPLE == 0
    return x.shape[0] == 1
