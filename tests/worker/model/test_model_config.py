"""ModelConfig reads every supported config.json dialect and rejects what it cannot serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.worker.model.checkpoints import LLAMA3_ROPE, make_hf_model, save_checkpoint
from worker.errors import ModelLoadError
from worker.model import Llama3RopeScaling, ModelConfig

BASE: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
}


def _config(tmp_path: Path, requested_dtype: str = "auto", **changes: Any) -> ModelConfig:
    """Write BASE with ``changes`` (None deletes a key) as config.json and parse it."""
    raw = {k: v for k, v in (BASE | changes).items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return ModelConfig.from_dir(tmp_path, requested_dtype)


@pytest.mark.parametrize(
    ("family", "qkv_bias", "o_proj_bias", "qk_norm"),
    [
        ("llama", False, False, False),
        ("mistral", False, False, False),
        ("qwen2", True, False, False),
        ("qwen3", False, False, True),
    ],
)
def test_architecture_flags_from_transformers_configs(
    family: str, qkv_bias: bool, o_proj_bias: bool, qk_norm: bool, tmp_path: Path
) -> None:
    config = ModelConfig.from_dir(save_checkpoint(make_hf_model(family), tmp_path))
    assert (config.qkv_bias, config.o_proj_bias, config.qk_norm) == (qkv_bias, o_proj_bias, qk_norm)
    assert config.num_key_value_heads == 2
    assert config.dtype == "float32"


def test_defaults_for_optional_keys(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.num_key_value_heads == 4
    assert config.head_dim == 16
    assert config.rope_theta == 10000.0
    assert config.rope_scaling is None
    assert config.max_model_len == 256
    assert not config.tie_word_embeddings
    assert config.eos_token_ids == ()


def test_llama_attention_bias_covers_o_proj(tmp_path: Path) -> None:
    config = _config(tmp_path, attention_bias=True)
    assert config.qkv_bias and config.o_proj_bias


def test_llama3_rope_from_transformers5_rope_parameters(tmp_path: Path) -> None:
    config = _config(tmp_path, rope_parameters=LLAMA3_ROPE)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 64)


def test_llama3_rope_from_transformers4_rope_scaling(tmp_path: Path) -> None:
    scaling = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    config = _config(tmp_path, rope_theta=123.0, rope_scaling=scaling)
    assert config.rope_theta == 123.0
    assert config.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 64)


def test_unsupported_rope_type_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json.*rope type 'yarn'"):
        _config(tmp_path, rope_scaling={"type": "yarn", "factor": 4.0})


def test_llama3_rope_without_factor_names_the_key(tmp_path: Path) -> None:
    rope = {k: v for k, v in LLAMA3_ROPE.items() if k != "factor"}
    with pytest.raises(ModelLoadError, match=r"config\.json: missing required key 'factor'"):
        _config(tmp_path, rope_parameters=rope)


def test_mistral_sliding_window_caps_max_model_len(tmp_path: Path) -> None:
    config = _config(tmp_path, architectures=["MistralForCausalLM"], sliding_window=128)
    assert config.sliding_window == 128
    assert config.max_model_len == 128


def test_qwen_sliding_window_counts_only_when_enabled(tmp_path: Path) -> None:
    qwen = {"architectures": ["Qwen2ForCausalLM"], "sliding_window": 64}
    assert _config(tmp_path, **qwen, use_sliding_window=False).max_model_len == 256
    enabled = _config(tmp_path, **qwen, use_sliding_window=True, max_window_layers=1)
    assert enabled.max_model_len == 64


def test_eos_token_id_may_be_a_list(tmp_path: Path) -> None:
    assert _config(tmp_path, eos_token_id=[2, 7]).eos_token_ids == (2, 7)
    assert _config(tmp_path, eos_token_id=2, bos_token_id=1).eos_token_ids == (2,)


@pytest.mark.parametrize(
    ("changes", "requested", "expected"),
    [
        ({}, "auto", "float32"),
        ({"torch_dtype": "bfloat16"}, "auto", "bfloat16"),
        ({"dtype": "float16"}, "auto", "float16"),
        ({"dtype": "bfloat16"}, "float32", "float32"),
    ],
)
def test_dtype_auto_reads_checkpoint_and_explicit_overrides(
    changes: dict[str, str], requested: str, expected: str, tmp_path: Path
) -> None:
    assert _config(tmp_path, requested, **changes).dtype == expected


def test_unsupported_dtype_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'float64' is not supported"):
        _config(tmp_path, "float64")


def test_missing_config_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json: not found"):
        ModelConfig.from_dir(tmp_path)


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json: cannot read JSON"):
        ModelConfig.from_dir(tmp_path)


def test_missing_required_key_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json: missing required key 'vocab_size'"):
        _config(tmp_path, vocab_size=None)


def test_kv_heads_must_divide_heads(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="num_key_value_heads 3"):
        _config(tmp_path, num_key_value_heads=3)
