"""Pre-quantized checkpoints: the converter writes the documented layout, loading it gives the
model that load-time quantization gives, and every broken or contradictory one is refused
naming the tensor or the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.worker.model.checkpoints import make_hf_model, random_tokens, save_checkpoint
from tests.worker.model.paging import PagedSequence, new_kv_caches, run_step
from worker.errors import ModelLoadError
from worker.model import LlamaForCausalLM, ModelConfig, load_model
from worker.model.checkpoint import INDEX_FILE
from worker.model.quantize_checkpoint import main, quantize_checkpoint

PROMPT = random_tokens(20)
WEIGHTS = "model.safetensors"
Q_PROJ = "model.layers.1.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2 checkpoint (q/k/v biases) in bfloat16, with a tokenizer file to carry over."""
    directory = tmp_path_factory.mktemp("source")
    save_checkpoint(make_hf_model("qwen2").to(torch.bfloat16), directory)
    (directory / "tokenizer.json").write_text('{"demo": true}')
    return directory


@pytest.fixture(scope="module")
def int8_dir(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("int8") / "out"
    quantize_checkpoint(source, directory, "int8")
    return directory


def _load(directory: Path, quantization: str | None = None) -> LlamaForCausalLM:
    config = ModelConfig.from_dir(directory, "float32")
    return load_model(directory, config, quantization=quantization)


def _logits(model: LlamaForCausalLM) -> torch.Tensor:
    kv_caches = new_kv_caches(model.config, num_blocks=4)
    return run_step(model, kv_caches, [(PagedSequence([3, 1]), PROMPT)])[0]


def _rewrite(directory: Path, changes: dict[str, torch.Tensor | None]) -> None:
    """Add or replace each named tensor of the single weights file; None removes it."""
    tensors = load_file(directory / WEIGHTS)
    for name, tensor in changes.items():
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    save_file(tensors, directory / WEIGHTS, metadata={"format": "pt"})


def _copy(directory: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_converted_checkpoint_loads_the_same_model_as_load_time_quantization(
    source: Path, tmp_path: Path, weights: str
) -> None:
    converted = tmp_path / weights
    assert quantize_checkpoint(source, converted, weights) == 2 * 7  # q k v o gate up down
    model = _load(converted)  # quantization None: taken from config.json
    assert model.quantization is not None and model.quantization.prequantized
    assert torch.equal(_logits(model), _logits(_load(source, weights)))
    assert torch.equal(_logits(_load(converted, weights)), _logits(model))


def test_converted_checkpoint_has_the_documented_layout(source: Path, int8_dir: Path) -> None:
    raw = json.loads((int8_dir / "config.json").read_text())
    assert raw["quantization_config"] == {"quant_method": "kvfleet", "weights": "int8"}
    assert (int8_dir / "tokenizer.json").read_text() == '{"demo": true}'
    with safe_open(str(int8_dir / WEIGHTS), framework="pt") as f:
        assert f.get_tensor(Q_PROJ).dtype == torch.int8
        scale = f.get_tensor(Q_PROJ + "_scale")
        assert scale.dtype == torch.float32 and scale.shape == (64,)
        # The embedding, norms, biases and head stay as they were.
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.layers.1.self_attn.q_proj.bias").dtype == torch.bfloat16
        assert not any(name.startswith("lm_head.weight_") for name in f.keys())  # noqa: SIM118


def test_sharded_checkpoint_converts_with_its_scales_in_the_index(tmp_path: Path) -> None:
    source = save_checkpoint(make_hf_model("llama"), tmp_path / "src", max_shard_size="100KB")
    quantize_checkpoint(source, tmp_path / "dst", "fp8")
    weight_map = json.loads((tmp_path / "dst" / INDEX_FILE).read_text())["weight_map"]
    assert weight_map[Q_PROJ + "_scale"] == weight_map[Q_PROJ]
    assert torch.equal(_logits(_load(tmp_path / "dst")), _logits(_load(source, "fp8")))


def test_quantized_checkpoint_missing_a_scale_names_it(int8_dir: Path, tmp_path: Path) -> None:
    broken = _copy(int8_dir, tmp_path)
    _rewrite(broken, {"model.layers.0.mlp.down_proj.weight_scale": None})
    with pytest.raises(
        ModelLoadError, match=r"missing tensors: model\.layers\.0\.mlp\.down_proj\.weight_scale"
    ):
        _load(broken)


def test_asking_for_another_quantization_than_the_checkpoints_is_refused(int8_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"'fp8' was asked for.*weights is 'int8'"):
        _load(int8_dir, "fp8")


def test_weight_stored_other_than_the_config_says_names_the_tensor(
    int8_dir: Path, tmp_path: Path
) -> None:
    broken = _copy(int8_dir, tmp_path)
    fp8 = load_file(int8_dir / WEIGHTS)[Q_PROJ].float().to(torch.float8_e4m3fn)
    _rewrite(broken, {Q_PROJ: fp8})
    with pytest.raises(
        ModelLoadError, match=rf"tensor '{Q_PROJ}'.*should be torch\.int8.*float8_e4m3fn"
    ):
        _load(broken)


def test_quantized_tensors_without_quantization_config_are_refused(
    int8_dir: Path, tmp_path: Path
) -> None:
    broken = _copy(int8_dir, tmp_path)
    raw = json.loads((broken / "config.json").read_text())
    del raw["quantization_config"]
    (broken / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=r"unknown tensor '.*weight_scale'"):
        _load(broken)
    with pytest.raises(ModelLoadError, match=r"cannot quantize a torch\.int8 weight"):
        _load(broken, "int8")


@pytest.mark.parametrize(
    ("quantization_config", "message"),
    [
        (
            {"quant_method": "gptq", "bits": 4},
            r"quantization_config\.quant_method 'gptq' is not supported",
        ),
        (
            {"quant_method": "kvfleet", "weights": "int4"},
            r"quantization_config\.weights must be one of int8, fp8",
        ),
        ("int8", r"quantization_config must be an object"),
    ],
)
def test_unsupported_quantization_config_names_the_field(
    int8_dir: Path, tmp_path: Path, quantization_config: object, message: str
) -> None:
    broken = _copy(int8_dir, tmp_path)
    raw = json.loads((broken / "config.json").read_text())
    raw["quantization_config"] = quantization_config
    (broken / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match=rf"config\.json: {message}"):
        ModelConfig.from_dir(broken)


def test_converter_refuses_a_quantized_source_and_a_destination_not_new(
    source: Path, int8_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit, match=r"already quantized \(int8\)"):
        main([str(int8_dir), str(tmp_path / "again"), "--weights", "fp8"])
    with pytest.raises(SystemExit, match="exists and is not an empty directory"):
        main([str(source), str(int8_dir), "--weights", "int8"])
    with pytest.raises(SystemExit, match="inside the source directory"):
        main([str(source), str(source / "int8"), "--weights", "int8"])
    assert not (source / "int8").exists()
    with pytest.raises(SystemExit):  # argparse: exit status 2
        main([str(source), str(tmp_path / "x"), "--weights", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    main([str(source), str(tmp_path / "new"), "--weights", "int8"])
    assert "14 linear weights quantized to int8" in capsys.readouterr().out
