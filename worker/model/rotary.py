"""Rotary position embedding: the cos/sin table, with Llama 3.1 frequency scaling."""

from __future__ import annotations

import math

import torch
from torch import nn

from kernels import ops
from worker.model_config import Llama3RopeScaling


def rope_inv_freq(
    head_dim: int, theta: float, scaling: Llama3RopeScaling | None = None
) -> torch.Tensor:
    """Inverse frequency of each rotated pair [head_dim / 2], float32, computed with the same
    operations as Hugging Face so the tables match bit for bit."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq
    old_context_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context_len / scaling.low_freq_factor
    high_freq_wavelen = old_context_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Rotates q and k by position (neox style, rotate-half as in Hugging Face Llama).

    ``cos_sin_cache`` is [max_positions, head_dim] float32: cos of each pair's angle in the first
    half, sin in the second. It stays float32 whatever the model dtype, so build the model in its
    dtype rather than calling ``.to(dtype)`` on it afterwards.
    """

    cos_sin_cache: torch.Tensor

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        theta: float,
        scaling: Llama3RopeScaling | None = None,
    ) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        positions = torch.arange(max_positions, dtype=torch.int64).to(torch.float32)
        angles = positions[:, None] * inv_freq[None, :]
        cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` [T, H, D] and ``key`` [T, KV, D] rotated by ``positions`` [T]."""
        return ops.rotary_embedding(positions, query, key, self.cos_sin_cache)
