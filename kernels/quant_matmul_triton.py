"""Triton kernel for the weight-quantized matmul (see quant_matmul_ref).

At decode batch sizes a linear layer is bound by reading its weight, so the weight stays int8
or fp8 in memory and each tile is converted in registers: to ``x``'s dtype, which holds every
int8 and e4m3 value exactly, then multiplied on the tensor cores into a float32 accumulator.
The per-output-feature scale is applied once, after the whole K loop, so it costs one multiply
per output instead of one per weight. ``x`` rows are padded up to 16, the smallest tile
``tl.dot`` takes; at decode that wastes arithmetic the memory-bound layer has to spare.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.layout import unit_last_stride


@triton.jit
def _quant_matmul_kernel(  # type: ignore[no-untyped-def]
    x_ptr,
    w_ptr,
    scale_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    FP8: tl.constexpr,
):
    # One program per [BLOCK_M, BLOCK_N] tile of the output.
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    # The weight is [N, K]; a tile is read transposed, [BLOCK_K, BLOCK_N], as tl.dot's right side.
    w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        k_ok = k + ks < K
        x = tl.load(x_rows + (k + ks)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_cols + (k + ks)[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0)
        if FP8:  # read as bytes: a masked load cannot fill fp8 lanes with ``other``
            w = w.to(tl.float8e4nv, bitcast=True)
        acc = tl.dot(x, w.to(x.dtype), acc, input_precision=PRECISION)
    scale = tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    out = acc * scale[None, :]
    tl.store(
        out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


def quant_matmul_triton(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``x`` [M, K] (float32, float16 or bfloat16) times the int8 or float8_e4m3fn ``qweight``
    [N, K] scaled by ``scale`` [N] per row → [M, N] in ``x``'s dtype, accumulated in float32."""
    x = unit_last_stride(x)
    qweight = unit_last_stride(qweight)
    (m, k), n = x.shape, qweight.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    # Untuned: decode (M <= 16) takes long K strips per program, prefill square-ish tiles.
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_k = max(16, min(128 if m <= 32 else 64, triton.next_power_of_2(k)))
    block_n = 64
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    fp8 = qweight.dtype == torch.float8_e4m3fn
    _quant_matmul_kernel[grid](
        x,
        qweight.view(torch.uint8) if fp8 else qweight,
        scale,
        out,
        m,
        n,
        k,
        x.stride(0),
        qweight.stride(0),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        # float32 inputs would otherwise be rounded to tf32 on the tensor cores.
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        FP8=fp8,
        num_warps=4,
    )
    return out
