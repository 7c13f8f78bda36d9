"""Every broken model directory fails with a ModelLoadError that names the file and tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.worker.model.checkpoints import make_hf_model, save_checkpoint
from worker.errors import ModelLoadError
from worker.model import ModelConfig, load_model

WEIGHTS = "model.safetensors"


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(make_hf_model("llama"), tmp_path)


def _load(directory: Path) -> None:
    load_model(directory, ModelConfig.from_dir(directory))


def _rewrite_tensors(path: Path, changes: dict[str, torch.Tensor | None]) -> None:
    """Add or replace each named tensor; None removes it."""
    tensors = load_file(path)
    for name, tensor in changes.items():
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    save_file(tensors, path, metadata={"format": "pt"})


def test_truncated_safetensors_names_the_file(checkpoint: Path) -> None:
    path = checkpoint / WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=rf"{WEIGHTS}.*unreadable safetensors"):
        _load(checkpoint)


def test_unsupported_architecture_names_it_and_the_supported_ones(checkpoint: Path) -> None:
    config_path = checkpoint / "config.json"
    raw = json.loads(config_path.read_text())
    raw["architectures"] = ["GPT2LMHeadModel"]
    config_path.write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=r"config\.json.*GPT2LMHeadModel.*Qwen3ForCausalLM"):
        ModelConfig.from_dir(checkpoint)


def test_index_referencing_a_deleted_shard_names_the_shard(tmp_path: Path) -> None:
    save_checkpoint(make_hf_model("llama"), tmp_path, max_shard_size="100KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=rf"index\.json.*{shard.name}"):
        _load(tmp_path)


def test_directory_without_safetensors_says_so(checkpoint: Path) -> None:
    (checkpoint / WEIGHTS).unlink()
    with pytest.raises(ModelLoadError, match=r"no model\.safetensors"):
        _load(checkpoint)


def test_unknown_tensor_names_file_and_tensor(checkpoint: Path) -> None:
    extra = {"model.layers.0.mlp.extra_proj.weight": torch.ones(4)}
    _rewrite_tensors(checkpoint / WEIGHTS, extra)
    with pytest.raises(ModelLoadError, match=rf"{WEIGHTS}.*model\.layers\.0\.mlp\.extra_proj"):
        _load(checkpoint)


def test_shape_mismatch_names_tensor_and_both_shapes(checkpoint: Path) -> None:
    wrong = {"model.layers.1.self_attn.k_proj.weight": torch.ones(16, 64)}
    _rewrite_tensors(checkpoint / WEIGHTS, wrong)
    expected = r"k_proj\.weight'.*expected \[32, 64\], got \[16, 64\]"
    with pytest.raises(
        ModelLoadError, match=rf"{WEIGHTS}: tensor 'model\.layers\.1\.self_attn\.{expected}"
    ):
        _load(checkpoint)


def test_tensor_missing_from_every_file_is_named(checkpoint: Path) -> None:
    _rewrite_tensors(checkpoint / WEIGHTS, {"model.layers.1.self_attn.v_proj.weight": None})
    with pytest.raises(
        ModelLoadError, match=r"missing tensors: model\.layers\.1\.self_attn\.v_proj"
    ):
        _load(checkpoint)


def test_untied_model_without_lm_head_is_missing_it(checkpoint: Path) -> None:
    _rewrite_tensors(checkpoint / WEIGHTS, {"lm_head.weight": None})
    with pytest.raises(ModelLoadError, match=r"missing tensors: lm_head\.weight"):
        _load(checkpoint)
