"""Torch reference for the weight-quantized matmul: ``x @ (scale * qweight)^T``.

``qweight`` [N, K] holds int8 or float8_e4m3fn values and ``scale`` [N] (float32) one factor per
output feature, so the stored values are multiplied out exactly (in float32) and each output
column is scaled once at the end, as the Triton kernel does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def quant_matmul_ref(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` [M, K] times the dequantized ``qweight`` [N, K] → [M, N] in ``x``'s dtype, computed
    in float32 and rounded once."""
    return (F.linear(x.float(), qweight.float()) * scale.float()).to(x.dtype)
