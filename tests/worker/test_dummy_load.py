"""load_format "dummy": a model from config.json alone, random weights made where they live."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, tokens_of
from tests.worker.model.paging import PagedSequence, new_kv_caches, run_step, shuffled_block_ids
from worker.config import EngineConfig
from worker.errors import ModelLoadError
from worker.model import LlamaForCausalLM, ModelConfig, load_model
from worker.model.norm import RMSNorm
from worker.parallel import ParallelConfig, ParallelState


@pytest.fixture
def config_only_dir(demo_model_dir: Path, tmp_path: Path) -> Path:
    """The demo model's config and tokenizer files, without its weights."""
    for path in demo_model_dir.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _dummy(directory: Path, seed: int, parallel: ParallelState | None = None) -> LlamaForCausalLM:
    return load_model(
        directory, ModelConfig.from_dir(directory), parallel, load_format="dummy", seed=seed
    )


def _logits(model: LlamaForCausalLM, prompt: list[int]) -> torch.Tensor:
    kv_caches = new_kv_caches(model.config, 4)
    (logits,) = run_step(model, kv_caches, [(PagedSequence(shuffled_block_ids(4)), prompt)])
    return logits


def test_dummy_engine_generates_tokens_from_a_directory_without_weights(
    config_only_dir: Path,
) -> None:
    assert not list(config_only_dir.glob("*.safetensors"))
    with pytest.raises(ModelLoadError):
        make_engine(config_only_dir)  # the default format needs the checkpoint

    engine = make_engine(config_only_dir, load_format="dummy")
    outputs = run_all(engine, {"a": "hello world", "b": [5, 6, 7, 8, 9]}, GREEDY_32)

    assert [len(tokens_of(outputs[rid])) for rid in ("a", "b")] == [32, 32]


def test_same_seed_gives_identical_logits_and_another_seed_does_not(
    config_only_dir: Path,
) -> None:
    prompt = [3, 14, 15, 92, 65, 35, 89, 79]
    first = _logits(_dummy(config_only_dir, seed=7), prompt)
    second = _logits(_dummy(config_only_dir, seed=7), prompt)
    other = _logits(_dummy(config_only_dir, seed=8), prompt)

    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_norm_scales_are_one_and_other_weights_small(config_only_dir: Path) -> None:
    model = _dummy(config_only_dir, seed=0)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, RMSNorm)}

    for name, param in model.named_parameters():
        if id(param) in norms:
            assert torch.equal(param, torch.ones_like(param)), name
        else:
            assert 0.01 < param.float().std().item() < 0.03, name


def test_each_rank_fills_only_its_own_shards(config_only_dir: Path) -> None:
    tp = ParallelConfig(tensor_parallel_size=2)
    ranks = [_dummy(config_only_dir, 0, ParallelState(tp, tp_rank=r)) for r in range(2)]
    whole = _dummy(config_only_dir, 0)

    for name, param in whole.named_parameters():
        shards = [dict(rank.named_parameters())[name] for rank in ranks]
        if param.dim() == 2:  # every matrix is split between the two ranks (plus vocab padding)
            assert all(shard.numel() < param.numel() for shard in shards), name
            assert sum(shard.numel() for shard in shards) >= param.numel(), name
        else:  # norm scales are whole on each rank
            assert all(shard.shape == param.shape for shard in shards), name
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    assert not torch.equal(*(dict(rank.named_parameters())[qkv] for rank in ranks))


def test_unknown_load_format_is_refused_naming_the_choices(config_only_dir: Path) -> None:
    message = "load_format must be one of safetensors, dummy, got 'pt'"
    with pytest.raises(ValueError, match=message):
        EngineConfig(model=config_only_dir, load_format="pt")
    with pytest.raises(ValueError, match=message):
        load_model(config_only_dir, ModelConfig.from_dir(config_only_dir), load_format="pt")
