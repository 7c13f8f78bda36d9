"""Each rank builds and reads only its own shard: its stage's layers, its slice of every
sharded weight. No process groups are needed to load, so the ranks are built in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cluster.demo_model import PRESETS
from tests.worker.model.checkpoints import make_hf_model, save_checkpoint
from worker.errors import ModelLoadError
from worker.model import LlamaForCausalLM, ModelConfig, load_model
from worker.model.weights import CheckpointTensor
from worker.parallel import ParallelConfig, ParallelState

DEMO = PRESETS["tiny"]


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the demo model's shape (random weights, no tokenizer)."""
    hf = make_hf_model(
        "llama",
        vocab_size=8192,
        hidden_size=DEMO.hidden_size,
        intermediate_size=DEMO.intermediate_size,
        num_hidden_layers=DEMO.num_layers,
        num_attention_heads=DEMO.num_heads,
        num_key_value_heads=DEMO.num_kv_heads,
    )
    return save_checkpoint(hf, tmp_path_factory.mktemp("demo-like"))


def _load_counting_reads(
    directory: Path, state: ParallelState, monkeypatch: pytest.MonkeyPatch
) -> tuple[LlamaForCausalLM, int]:
    """Load one rank's shard; returns it and the bytes it read from the checkpoint."""
    read = 0
    original = CheckpointTensor.load

    def counting_load(self: CheckpointTensor) -> torch.Tensor:
        nonlocal read
        tensor = original(self)
        read += tensor.numel() * tensor.element_size()
        return tensor

    with monkeypatch.context() as patch:
        patch.setattr(CheckpointTensor, "load", counting_load)
        model = load_model(directory, ModelConfig.from_dir(directory), state)
    return model, read


def _param_bytes(model: LlamaForCausalLM) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_tp2_rank_holds_half_the_weights_and_reads_only_those(
    demo_like: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = _param_bytes(load_model(demo_like, ModelConfig.from_dir(demo_like)))
    for tp_rank in range(2):
        state = ParallelState(ParallelConfig(tensor_parallel_size=2), tp_rank=tp_rank)
        model, read = _load_counting_reads(demo_like, state, monkeypatch)
        # Everything is sharded but the norms (0.02% of the whole here); the bound is 0.55.
        fraction = _param_bytes(model) / total
        assert 0.5 < fraction <= 0.501
        assert read == _param_bytes(model)


def test_pipeline_stage_reads_only_its_own_layers(
    demo_like: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = ParallelState(ParallelConfig(pipeline_parallel_size=2), pp_rank=1)
    model, read = _load_counting_reads(demo_like, state, monkeypatch)
    names = {name for name, _ in model.named_parameters()}
    assert not any(name.startswith(("model.layers.0.", "model.layers.1.")) for name in names)
    assert {"model.layers.2.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"} <= names
    assert "model.embed_tokens.weight" not in names
    assert read == _param_bytes(model)


def test_tied_head_on_a_later_stage_is_a_copy_of_the_embedding(tmp_path: Path) -> None:
    hf = make_hf_model("llama", tie_word_embeddings=True, vocab_size=509)
    save_checkpoint(hf, tmp_path)
    config = ModelConfig.from_dir(tmp_path)
    state = ParallelState(ParallelConfig(2, 2), tp_rank=1, pp_rank=1)
    model = load_model(tmp_path, config, state)
    head = model.lm_head.weight
    # tp_rank 1 keeps rows [255, 510) of a vocabulary padded to 510: 254 real rows, 1 of padding.
    embedding = hf.model.embed_tokens.weight.detach()
    assert head.shape == (255, 64)
    assert torch.equal(head[:254], embedding[255:])
    assert torch.equal(head[254:], torch.zeros(1, 64))


def test_stage_reports_its_own_missing_tensor_and_ignores_other_stages(tmp_path: Path) -> None:
    save_checkpoint(make_hf_model("llama", num_hidden_layers=2), tmp_path)
    path = tmp_path / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        names = [name for name in f.keys() if "layers.1.mlp.up_proj" not in name]  # noqa: SIM118 (not iterable)
        tensors = {name: f.get_tensor(name) for name in names}
    save_file(tensors, str(path), metadata={"format": "pt"})
    config = ModelConfig.from_dir(tmp_path)
    first = ParallelState(ParallelConfig(pipeline_parallel_size=2), pp_rank=0)
    load_model(tmp_path, config, first)
    last = ParallelState(ParallelConfig(pipeline_parallel_size=2), pp_rank=1)
    with pytest.raises(ModelLoadError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj"):
        load_model(tmp_path, config, last)


def test_later_stage_without_the_previous_stage_output_says_so(tmp_path: Path) -> None:
    save_checkpoint(make_hf_model("llama", num_hidden_layers=2), tmp_path)
    state = ParallelState(ParallelConfig(pipeline_parallel_size=2), pp_rank=1)
    model = load_model(tmp_path, ModelConfig.from_dir(tmp_path), state)
    with pytest.raises(ValueError, match="needs the previous stage's"):
        model(torch.tensor([1]), torch.tensor([0]), [torch.zeros(1)], None)  # type: ignore[arg-type]
    first = load_model(
        tmp_path, ModelConfig.from_dir(tmp_path), ParallelState(state.config, pp_rank=0)
    )
    with pytest.raises(RuntimeError, match="only the last pipeline stage computes logits"):
        first.compute_logits(torch.zeros(1, 64))
