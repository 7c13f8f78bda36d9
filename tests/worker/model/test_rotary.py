"""Our cos/sin table is the one transformers computes, with and without Llama 3.1 scaling."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from tests.worker.model.checkpoints import LLAMA3_ROPE, TINY
from worker.model.rotary import RotaryEmbedding, rope_inv_freq
from worker.model_config import Llama3RopeScaling

HEAD_DIM = TINY["hidden_size"] // TINY["num_attention_heads"]
SCALING = Llama3RopeScaling(
    factor=LLAMA3_ROPE["factor"],
    low_freq_factor=LLAMA3_ROPE["low_freq_factor"],
    high_freq_factor=LLAMA3_ROPE["high_freq_factor"],
    original_max_position_embeddings=LLAMA3_ROPE["original_max_position_embeddings"],
)


@pytest.mark.parametrize("scaling", [None, SCALING], ids=["default", "llama3"])
def test_cos_sin_cache_equals_transformers_bit_for_bit(scaling: Llama3RopeScaling | None) -> None:
    theta = LLAMA3_ROPE["rope_theta"]
    rope = {"rope_type": "default", "rope_theta": theta} if scaling is None else LLAMA3_ROPE
    hf_rope = LlamaRotaryEmbedding(transformers.LlamaConfig(**TINY, rope_parameters=rope))
    positions = torch.arange(TINY["max_position_embeddings"])
    hf_cos, hf_sin = hf_rope(torch.zeros(1, dtype=torch.float32), positions[None])

    ours = RotaryEmbedding(HEAD_DIM, TINY["max_position_embeddings"], theta, scaling)
    cos, sin = ours.cos_sin_cache.chunk(2, dim=-1)
    assert ours.cos_sin_cache.dtype == torch.float32
    # transformers repeats each angle for both halves of the head (rotate-half layout).
    assert torch.equal(torch.cat((cos, cos), dim=-1), hf_cos[0])
    assert torch.equal(torch.cat((sin, sin), dim=-1), hf_sin[0])


def test_llama3_scaling_slows_low_frequencies_and_keeps_high_ones() -> None:
    plain = rope_inv_freq(HEAD_DIM, LLAMA3_ROPE["rope_theta"])
    scaled = rope_inv_freq(HEAD_DIM, LLAMA3_ROPE["rope_theta"], SCALING)
    assert scaled[0] == plain[0]
    assert torch.allclose(scaled[-1], plain[-1] / SCALING.factor)
    assert not torch.equal(scaled, plain)
