"""Triton kernels for RMSNorm and the fused residual-add + RMSNorm (see norm_ref)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.layout import unit_last_stride


@triton.jit
def _rms_norm_kernel(  # type: ignore[no-untyped-def]
    x_ptr,
    residual_ptr,
    summed_ptr,
    out_ptr,
    weight_ptr,
    n_cols,
    stride_x,
    stride_r,
    stride_s,
    stride_o,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per row; the whole row fits in one block.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        # The reference rounds the sum to its dtype before normalising it; so do we.
        summed = (x + residual.to(tl.float32)).to(summed_ptr.dtype.element_ty)
        tl.store(summed_ptr + row * stride_s + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    variance = tl.sum(x * x, axis=0) / n_cols
    # Hugging Face Llama casts the normalised row back to the input dtype before the weight;
    # ``summed`` has that dtype in both modes (plain RMSNorm passes ``x`` as ``summed``).
    normed = (x * tl.rsqrt(variance + eps)).to(summed_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + row * stride_o + cols, (normed * weight).to(out_ptr.dtype.element_ty), mask=mask
    )


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, computed in float32, scaled in the input dtype."""
    rows = _as_rows(x)
    out = torch.empty(rows.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    _launch(rows, rows, rows, out, weight, eps, has_residual=False)
    return out.view(x.shape)


def fused_add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rms_norm(x + residual), x + residual)``; the sum is the next residual."""
    rows, residual_rows = _as_rows(x), _as_rows(residual)
    summed_dtype = torch.promote_types(x.dtype, residual.dtype)
    summed = torch.empty(rows.shape, dtype=summed_dtype, device=x.device)
    out_dtype = torch.promote_types(weight.dtype, summed_dtype)
    out = torch.empty(rows.shape, dtype=out_dtype, device=x.device)
    _launch(rows, residual_rows, summed, out, weight, eps, has_residual=True)
    return out.view(x.shape), summed.view(x.shape)


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor,
    summed: torch.Tensor,
    out: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    has_residual: bool,
) -> None:
    num_rows, n_cols = x.shape
    if num_rows == 0:
        return
    block = triton.next_power_of_2(n_cols)
    _rms_norm_kernel[(num_rows,)](
        x,
        residual,
        summed,
        out,
        weight,
        n_cols,
        x.stride(0),
        residual.stride(0),
        summed.stride(0),
        out.stride(0),
        eps,
        HAS_RESIDUAL=has_residual,
        BLOCK=block,
        num_warps=min(max(block // 256, 1), 16),
    )


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    return unit_last_stride(x.reshape(-1, x.shape[-1]))
