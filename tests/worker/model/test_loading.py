"""Loading sharded checkpoints, in every supported dtype, ignoring what is recomputed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.worker.model.checkpoints import make_hf_model, random_tokens, save_checkpoint
from tests.worker.model.paging import PagedSequence, new_kv_caches, run_step
from worker.model import LlamaForCausalLM, ModelConfig, load_model

PROMPT = random_tokens(20)


def _prefill_logits(model: LlamaForCausalLM) -> torch.Tensor:
    kv_caches = new_kv_caches(model.config, num_blocks=4)
    return run_step(model, kv_caches, [(PagedSequence([3, 1]), PROMPT)])[0]


def _load(directory: Path, dtype: str = "auto") -> LlamaForCausalLM:
    return load_model(directory, ModelConfig.from_dir(directory, dtype))


def test_sharded_checkpoint_loads_same_weights_as_single_file(tmp_path: Path) -> None:
    hf = make_hf_model("qwen2")
    single = save_checkpoint(hf, tmp_path / "single")
    sharded = save_checkpoint(hf, tmp_path / "sharded", max_shard_size="100KB")
    assert not (sharded / "model.safetensors").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1

    assert torch.equal(_prefill_logits(_load(sharded)), _prefill_logits(_load(single)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_load_has_that_dtype_and_close_logits(dtype: str, tmp_path: Path) -> None:
    save_checkpoint(make_hf_model("llama"), tmp_path)
    model = _load(tmp_path, dtype)
    reference = _prefill_logits(_load(tmp_path, "float32"))

    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    logits = _prefill_logits(model)
    assert logits.dtype == torch.float32
    assert (logits - reference).abs().max().item() < 0.05 * reference.abs().max().item()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean().item() >= 0.8


def test_auto_dtype_follows_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(make_hf_model("llama").to(torch.bfloat16), tmp_path)
    model = _load(tmp_path)
    assert model.config.dtype == "bfloat16"
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.layers[0].self_attn.rotary_emb.cos_sin_cache.dtype == torch.float32


def test_rotary_inv_freq_and_tied_lm_head_in_checkpoint_are_ignored(tmp_path: Path) -> None:
    save_checkpoint(make_hf_model("llama", tie_word_embeddings=True), tmp_path)
    expected = _prefill_logits(_load(tmp_path))
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    tensors["lm_head.weight"] = torch.zeros_like(tensors["model.embed_tokens.weight"])
    save_file(tensors, path, metadata={"format": "pt"})

    model = _load(tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(_prefill_logits(model), expected)


def test_loaded_model_is_in_eval_mode_without_grad(tmp_path: Path) -> None:
    save_checkpoint(make_hf_model("qwen3", head_dim=16), tmp_path)
    model = _load(tmp_path)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
