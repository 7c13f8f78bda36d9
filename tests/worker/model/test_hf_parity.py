"""Our paged model reproduces transformers' logits for every supported architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.model.checkpoints import (
    LLAMA3_ROPE,
    hf_greedy,
    make_hf_model,
    random_tokens,
    save_checkpoint,
)
from tests.worker.model.paging import PagedSequence, new_kv_caches, run_step, shuffled_block_ids
from worker.model import ModelConfig, load_model

PROMPT_LEN = 20
DECODE_STEPS = 9
TOLERANCE = 1e-4


VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "llama-llama3-rope": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "llama-tied-embeddings": ("llama", {"tie_word_embeddings": True}),
    "llama-attention-bias": ("llama", {"attention_bias": True}),
    # Within its window sliding attention is full attention, so a window longer than the
    # sequence must change nothing.
    "mistral-sliding-window": ("mistral", {"sliding_window": 64}),
    "qwen2-qkv-bias": ("qwen2", {}),
    "qwen3-qk-norm": ("qwen3", {"head_dim": 32}),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_then_decode_matches_transformers(variant: str, tmp_path: Path) -> None:
    family, overrides = VARIANTS[variant]
    hf = make_hf_model(family, **overrides)
    config = ModelConfig.from_dir(save_checkpoint(hf, tmp_path))
    model = load_model(tmp_path, config)
    prompt = random_tokens(PROMPT_LEN)
    tokens, hf_logits = hf_greedy(hf, prompt, DECODE_STEPS)

    seq = PagedSequence(shuffled_block_ids(8)[:3])
    kv_caches = new_kv_caches(config, num_blocks=8)
    ours = run_step(model, kv_caches, [(seq, prompt)])
    for position in range(PROMPT_LEN, len(tokens)):
        ours += run_step(model, kv_caches, [(seq, [tokens[position]])])
    logits = torch.cat(ours)

    # The last token is only fed to check its logits; all positions are compared.
    assert logits.shape == hf_logits.shape
    assert (logits - hf_logits).abs().max().item() < TOLERANCE
    assert logits[PROMPT_LEN - 1 : -1].argmax(-1).tolist() == tokens[PROMPT_LEN:]
