"""Torch reference for SiLU-and-multiply (the gated MLP activation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """``x`` is [..., 2 * I] holding gate then up; returns ``silu(gate) * up`` [..., I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
