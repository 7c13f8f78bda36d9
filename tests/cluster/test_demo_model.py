"""Specification of the demo model generator (`kvfleet demo-model`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from cluster.cli import main
from cluster.demo_model import PRESETS, DemoPreset, weight_shapes, write_demo_model
from cluster.demo_tokenizer import BOS_TOKEN, EOS_TOKEN, IM_END_TOKEN, IM_START_TOKEN

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]
ROUND_TRIP_TEXTS = [
    "The router sends each request to the replica that already caches its prefix.",
    "naïve café — 東京",
    "  leading spaces, trailing spaces  \n\ttabs\tand\r\nwindows newlines\n\n",
    "def f(x):\n    return x ** 2  # 12345 67.89e-3 {'a': [1, 2]}",
    "spaced punctuation , like this . or this ! it 's what they do n't fix ?",
    "emoji 🚀 and ümlauts in Straße, Ωμέγα, ελληνικά, русский, 한국어",
    "",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("demo") / "tiny"
    write_demo_model(out_dir, preset="tiny", seed=0)
    return out_dir


def read_json(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_writes_every_checkpoint_file(tiny_dir: Path) -> None:
    assert sorted(entry.name for entry in tiny_dir.iterdir()) == DEMO_FILES


def test_same_seed_gives_identical_bytes_across_processes(tiny_dir: Path, tmp_path: Path) -> None:
    # A fresh interpreter has fresh hash seeds, so this also catches order-dependent training.
    other = tmp_path / "again"
    subprocess.run(
        [sys.executable, "-m", "cluster.cli", "demo-model", str(other), "--seed", "0"],
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONHASHSEED": "random"},
        capture_output=True,
    )
    for name in DEMO_FILES:
        assert (other / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_different_seed_changes_only_the_weights(tiny_dir: Path, tmp_path: Path) -> None:
    write_demo_model(tmp_path, preset="tiny", seed=1)
    assert (tmp_path / "model.safetensors").read_bytes() != (
        tiny_dir / "model.safetensors"
    ).read_bytes()
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        assert (tmp_path / name).read_bytes() == (tiny_dir / name).read_bytes(), name


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_and_weights_match_the_preset(preset: str, tmp_path: Path) -> None:
    write_demo_model(tmp_path, preset=preset, seed=0)
    shape = PRESETS[preset]
    config = read_json(tmp_path / "config.json")
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert config["torch_dtype"] == "float32"
    assert config["num_hidden_layers"] == shape.num_layers
    assert config["hidden_size"] == shape.hidden_size
    assert config["num_attention_heads"] == shape.num_heads
    assert config["num_key_value_heads"] == shape.num_kv_heads
    assert config["intermediate_size"] == shape.intermediate_size
    assert config["head_dim"] == shape.hidden_size // shape.num_heads
    assert config["vocab_size"] == tokenizer.get_vocab_size()
    assert config["bos_token_id"] == tokenizer.token_to_id(BOS_TOKEN)
    assert config["eos_token_id"] == tokenizer.token_to_id(EOS_TOKEN)
    assert config["max_position_embeddings"] == 2048
    assert config["rope_theta"] == 10000.0
    assert config["rms_norm_eps"] == 1e-5
    assert config["tie_word_embeddings"] is False
    assert config["hidden_act"] == "silu"
    assert config["attention_bias"] is False

    expected = weight_shapes(shape, tokenizer.get_vocab_size())
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as weights:
        assert sorted(weights.keys()) == sorted(expected)
        for name, size in expected.items():
            tensor = weights.get_tensor(name)
            assert tensor.dtype == torch.float32
            assert tuple(tensor.shape) == size, name
            if name.endswith("norm.weight"):
                assert torch.equal(tensor, torch.ones(size)), name
            elif tensor.numel() > 10_000:
                assert abs(tensor.mean().item()) < 2e-3, name
                assert tensor.std().item() == pytest.approx(0.02, rel=0.05), name


def test_weight_names_are_those_of_hf_llama() -> None:
    names = set(weight_shapes(DemoPreset(2, 8, 2, 1, 16), vocab_size=10))
    per_layer = [
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
    ]
    assert names == {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        *(f"model.layers.{i}.{suffix}" for i in range(2) for suffix in per_layer),
    }


def test_vocab_is_about_8k_and_equals_config_vocab_size(tiny_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    assert 7000 <= tokenizer.get_vocab_size() <= 8300
    assert read_json(tiny_dir / "config.json")["vocab_size"] == tokenizer.get_vocab_size()


def test_special_tokens_are_single_ids(tiny_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    for token in [BOS_TOKEN, EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN]:
        token_id = tokenizer.token_to_id(token)
        assert token_id is not None
        assert tokenizer.encode(f"a{token}b").ids.count(token_id) == 1
    generation = read_json(tiny_dir / "generation_config.json")
    assert generation["eos_token_id"] == [
        tokenizer.token_to_id(EOS_TOKEN),
        tokenizer.token_to_id(IM_END_TOKEN),
    ]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_tokenizer_round_trips_text(tiny_dir: Path, text: str) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_tokenizer_learned_real_merges(tiny_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    text = "The weather was cold, so the cache stayed warm."
    # Byte-level without merges would need one token per byte.
    assert len(tokenizer.encode(text).ids) <= 14


def test_transformers_tokenizer_loads_and_applies_chat_template(tiny_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    assert len(tokenizer) == read_json(tiny_dir / "config.json")["vocab_size"]
    for text in ROUND_TRIP_TEXTS:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is a KV cache?"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|begin_of_text|><|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nWhat is a KV cache?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START_TOKEN)) == 3
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_END_TOKEN)) == 2


def test_transformers_loads_every_weight_and_runs_forward(tiny_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_dir, output_loading_info=True
    )
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    with safe_open(str(tiny_dir / "model.safetensors"), framework="pt") as weights:
        assert torch.equal(model.lm_head.weight, weights.get_tensor("lm_head.weight"))
    vocab_size = read_json(tiny_dir / "config.json")["vocab_size"]
    input_ids = torch.tensor([[0, 17, 300, 4000, 8000]])
    with torch.no_grad():
        logits = model(input_ids).logits
    assert logits.shape == (1, 5, vocab_size)
    assert torch.isfinite(logits).all()


def test_unknown_preset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset 'huge'"):
        write_demo_model(tmp_path / "out", preset="huge")
    assert not (tmp_path / "out").exists()


def test_negative_seed_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        write_demo_model(tmp_path / "out", seed=-1)
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.write_text("not a directory")
    with pytest.raises(ValueError, match="not a directory"):
        write_demo_model(target)
    assert target.read_text() == "not a directory"


def test_foreign_non_empty_directory_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        write_demo_model(tmp_path)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["notes.txt"]


def test_real_looking_checkpoint_without_marker_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="not empty"):
        write_demo_model(tmp_path)
    assert (tmp_path / "config.json").read_text() == '{"model_type": "llama"}'


def test_existing_demo_model_is_rewritten_in_place(tiny_dir: Path, tmp_path: Path) -> None:
    write_demo_model(tmp_path, preset="tiny", seed=5)
    write_demo_model(tmp_path, preset="tiny", seed=0)
    for name in DEMO_FILES:
        assert (tmp_path / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_cli_writes_the_demo_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "nested" / "demo"
    assert main(["demo-model", str(out_dir), "--preset", "tiny", "--seed", "3"]) == 0
    assert sorted(entry.name for entry in out_dir.iterdir()) == DEMO_FILES
    assert read_json(out_dir / "config.json")["kvfleet_demo"] == {"preset": "tiny", "seed": 3}
    assert str(out_dir) in capsys.readouterr().out
