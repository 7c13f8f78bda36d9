"""Building one rank's shard of a model in its dtype (its linear layers perhaps quantized) and
filling it from a safetensors checkpoint, reading only the blocks that rank keeps (or with
random weights: "dummy")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from worker.errors import ModelLoadError
from worker.model.checkpoint import checkpoint_files, iter_tensors
from worker.model.dummy import fill_dummy_weights
from worker.model.llama import LlamaForCausalLM, PPMissingLayer
from worker.model.quantization import check_device_supports, resolve_quantization
from worker.model.weights import ShardId, get_weight_loader, is_computed
from worker.model_config import LOAD_FORMATS, ModelConfig
from worker.parallel.state import ParallelState

EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


def load_model(
    model_dir: Path,
    config: ModelConfig,
    parallel: ParallelState | None = None,
    device: torch.device | str = "cpu",
    load_format: str = "safetensors",
    seed: int = 0,
    quantization: str | None = None,
) -> LlamaForCausalLM:
    """Build this rank's shard of the model (the whole model when ``parallel`` is None, i.e.
    tp = pp = 1) directly in ``config.dtype`` on ``device`` and load its weights from
    ``model_dir`` ("safetensors"), or fill them with random values seeded by ``seed`` ("dummy",
    which reads no weight file); returns it in eval mode with gradients off. ``quantization``
    ("int8", "fp8") quantizes the linear layers' weights as they load; a checkpoint stored
    quantized (``config.checkpoint_quantization``) loads so with None or the same value.
    Raises ``ModelLoadError`` naming the file and tensor for any missing, unknown, corrupt,
    mis-shaped or mis-quantized weight, and ValueError for an unknown ``load_format`` or
    ``quantization``, fp8 on a GPU without it, or a model that cannot be split as ``parallel``
    says."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(
            f"load_format must be one of {', '.join(LOAD_FORMATS)}, got {load_format!r}"
        )
    device = torch.device(device)
    quant = resolve_quantization(quantization, config.checkpoint_quantization)
    if quant is not None:
        check_device_supports(quant.weights, device)
    with torch.device(device), _default_dtype(torch_dtype(config.dtype)):
        model = LlamaForCausalLM(config, parallel, quant)
    if load_format == "dummy":
        fill_dummy_weights(model, seed)
    else:
        load_weights(model, Path(model_dir))
    model.eval()
    model.requires_grad_(False)
    return model


def load_weights(model: LlamaForCausalLM, model_dir: Path) -> None:
    """Give every checkpoint tensor this rank needs to its parameter's weight_loader, which
    reads only its block; tensors of other pipeline stages are skipped unread."""
    params = dict(model.named_parameters())
    other_stages = tuple(
        f"{name}." for name, module in model.named_modules() if isinstance(module, PPMissingLayer)
    )
    expected = _expected_checkpoint_names(model, params)
    loaded: set[str] = set()
    for path in checkpoint_files(model_dir):
        for name, tensor in iter_tensors(path):
            if _ignored(name, model):
                continue
            for param_name, shard_id in _targets(name, model, params):
                param = params.get(param_name)
                if param is None:
                    if param_name.startswith(other_stages):
                        continue
                    raise ModelLoadError(f"{path}: unknown tensor {name!r}")
                try:
                    get_weight_loader(param)(param, tensor, shard_id)
                except ModelLoadError as e:
                    raise ModelLoadError(f"{path}: tensor {name!r}: {e}") from e
                loaded.add(name)
    missing = sorted(expected - loaded)
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise ModelLoadError(f"{model_dir}: checkpoint is missing tensors: {shown}")


def _ignored(name: str, model: LlamaForCausalLM) -> bool:
    # inv_freq is recomputed, not loaded; a tied lm_head is the embedding table itself.
    if name.endswith(".rotary_emb.inv_freq"):
        return True
    return name == LM_HEAD and model.config.tie_word_embeddings


def _targets(
    name: str, model: LlamaForCausalLM, params: dict[str, nn.Parameter]
) -> list[tuple[str, ShardId]]:
    """The (parameter name, shard id) pairs a checkpoint tensor is loaded into."""
    targets = [param_name_of(name, model)]
    # A tied head on a last stage that is not the first has its own copy of the table (on a
    # single stage both names are one parameter, which named_parameters lists once).
    if name == EMBEDDING and model.config.tie_word_embeddings and LM_HEAD in params:
        targets.append((LM_HEAD, None))
    return targets


def param_name_of(name: str, model: LlamaForCausalLM) -> tuple[str, ShardId]:
    """Checkpoint tensor name → (our parameter name, shard id within it)."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in model.packed_modules_mapping:
        module, shard_id = model.packed_modules_mapping[parts[-2]]
        return ".".join([*parts[:-2], module, parts[-1]]), shard_id
    return name, None


def _expected_checkpoint_names(
    model: LlamaForCausalLM, params: dict[str, nn.Parameter]
) -> set[str]:
    """Every checkpoint tensor this rank needs: a packed parameter needs each of its shards;
    a parameter computed at load time needs none."""
    unpacked: dict[str, list[str]] = {}
    for checkpoint_module, (module, _) in model.packed_modules_mapping.items():
        unpacked.setdefault(module, []).append(checkpoint_module)
    names = set()
    for param_name, param in params.items():
        if is_computed(param):
            continue
        if param_name == LM_HEAD and model.config.tie_word_embeddings:
            names.add(EMBEDDING)
            continue
        parts = param_name.split(".")
        for module in unpacked.get(parts[-2], [parts[-2]]):
            names.add(".".join([*parts[:-2], module, parts[-1]]))
    return names


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ModelConfig.dtype name ("float32", "bfloat16", "float16")."""
    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype), name
    return dtype


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # Parameters are created in the target dtype instead of float32-then-cast, which would
    # briefly need twice the memory. The default dtype is process-global: build one model at
    # a time.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
