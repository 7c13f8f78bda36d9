"""Torch reference for neox-style rotary position embedding."""

from __future__ import annotations

import torch


def rotary_embedding_ref(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``query`` [T, H, D] and ``key`` [T, KV, D] by position; ``cos_sin_cache`` is
    [max_positions, D] float32 holding cos in its first half and sin in its second."""
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    # q and k in one pass: the same operations on each element, half the calls.
    num_heads = query.shape[1]
    rotated = _rotate(torch.cat((query, key), dim=1), cos, sin)
    return rotated[:, :num_heads].to(query.dtype), rotated[:, num_heads:].to(key.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.to(torch.float32).chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
