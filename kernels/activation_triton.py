"""Triton kernel for SiLU-and-multiply, the gated MLP activation (see activation_ref)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.layout import unit_last_stride

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, width, stride_x, stride_o, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
    # Grid: (rows, column blocks of the output).
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + width + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    """``x`` is [..., 2 * I] holding gate then up; returns ``silu(gate) * up`` [..., I]."""
    width = x.shape[-1] // 2
    rows = unit_last_stride(x.reshape(-1, x.shape[-1]))
    out = torch.empty((rows.shape[0], width), dtype=x.dtype, device=x.device)
    if rows.shape[0] > 0 and width > 0:
        grid = (rows.shape[0], triton.cdiv(width, BLOCK))
        _silu_and_mul_kernel[grid](rows, out, width, rows.stride(0), out.stride(0), BLOCK=BLOCK)
    return out.view(*x.shape[:-1], width)
