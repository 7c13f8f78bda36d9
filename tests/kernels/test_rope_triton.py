"""Triton RoPE equals the reference, on a plain and on a Llama 3.1-scaled cos/sin table."""

from __future__ import annotations

import pytest
import torch

from kernels.rope_ref import rotary_embedding_ref
from kernels.rope_triton import rotary_embedding_triton
from tests.kernels.helpers import DEVICE, DTYPES, assert_close_to, randn
from worker.model.rotary import RotaryEmbedding
from worker.model_config import Llama3RopeScaling

HEAD_DIM, MAX_POSITIONS = 32, 16384
LLAMA3 = Llama3RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaling", [None, LLAMA3], ids=["plain", "llama3"])
def test_rotary_embedding_matches_reference(
    dtype: torch.dtype, scaling: Llama3RopeScaling | None
) -> None:
    cache = RotaryEmbedding(HEAD_DIM, MAX_POSITIONS, 500000.0, scaling).cos_sin_cache
    # Positions past the original context, where Llama 3.1 scaling changes the angles.
    positions = torch.tensor([0, 1, 9000, 15999, 5, 8191, 12345], device=DEVICE)
    num_tokens = positions.numel()
    # q and k are views into a fused qkv row, as the model hands them over.
    qkv = randn((num_tokens, (3 + 2 * 1) * HEAD_DIM), dtype, seed=14)
    query = qkv[:, : 3 * HEAD_DIM].view(num_tokens, 3, HEAD_DIM)
    key = qkv[:, 3 * HEAD_DIM : 4 * HEAD_DIM].view(num_tokens, 1, HEAD_DIM)

    q_out, k_out = rotary_embedding_triton(positions, query, key, cache.to(DEVICE))
    q_ref, k_ref = rotary_embedding_ref(positions.cpu(), query.cpu(), key.cpu(), cache)

    assert q_out.dtype == dtype and k_out.shape == key.shape
    assert_close_to(q_out, q_ref, dtype)
    assert_close_to(k_out, k_ref, dtype)
