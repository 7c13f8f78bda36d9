"""Tensor layout helpers shared by the Triton wrappers."""

from __future__ import annotations

import torch


def unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its last dimension is contiguous, else a contiguous copy.

    The kernels take every stride but the last, which lets them read the q/k/v views of a fused
    qkv projection in place; anything stranger is copied once here.
    """
    return x if x.stride(-1) == 1 else x.contiguous()
