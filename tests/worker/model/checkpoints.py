"""Tiny random Hugging Face checkpoints for the model tests, built locally with transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel

TINY: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    # Wider than the default 0.02 so logits are spread out and greedy picks are not near-ties.
    "initializer_range": 0.1,
}

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small enough that head_dim 16 has frequencies in all three bands (kept, smoothed, scaled).
    "original_max_position_embeddings": 64,
}

_CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
}


def make_hf_model(family: str, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A random float32 model of ``family`` ("llama", "mistral", "qwen2", "qwen3")."""
    config_class, model_class = _CLASSES[family]
    torch.manual_seed(seed)
    config = config_class(**(TINY | overrides))
    model = model_class(config).eval()
    # transformers initialises norms to 1 and biases to 0, which would hide a norm or bias that
    # is loaded into the wrong place or not at all.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def save_checkpoint(model: PreTrainedModel, directory: Path, **kwargs: Any) -> Path:
    """``save_pretrained`` into ``directory`` (kwargs such as ``max_shard_size`` pass through)."""
    model.save_pretrained(directory, **kwargs)
    return directory


def hf_greedy(
    model: PreTrainedModel, prompt: list[int], num_new_tokens: int
) -> tuple[list[int], torch.Tensor]:
    """Greedy-extend ``prompt`` with transformers; returns all tokens and the float32 logits
    [len(tokens), vocab] of one full forward pass over them."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(num_new_tokens):
            logits = model(torch.tensor([tokens]), use_cache=False).logits[0]
            tokens.append(int(logits[-1].argmax()))
        logits = model(torch.tensor([tokens]), use_cache=False).logits[0]
    return tokens, logits.float()


def random_tokens(count: int, vocab_size: int = TINY["vocab_size"], seed: int = 1) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (count,), generator=generator).tolist()
