"""How a parameter receives checkpoint tensors: each parameter carries its own ``weight_loader``.

A layer that packs several checkpoint tensors into one parameter (q/k/v, gate/up) attaches a
loader that knows where each shard goes, so the model loader never special-cases layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from worker.errors import ModelLoadError

ShardId = int | str | None
WeightLoader = Callable[[nn.Parameter, torch.Tensor, ShardId], None]


def copy_weight(target: torch.Tensor, loaded: torch.Tensor) -> None:
    """Copy ``loaded`` into ``target`` (converting dtype and device); shapes must match exactly."""
    if target.shape != loaded.shape:
        raise ModelLoadError(
            f"shape mismatch: expected {list(target.shape)}, got {list(loaded.shape)}"
        )
    target.copy_(loaded)


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
    """The loader of a parameter that is stored whole, under one name, in the checkpoint."""
    if shard_id is not None:
        raise ModelLoadError(f"parameter stored whole has no shard {shard_id!r}")
    copy_weight(param.data, loaded)


def set_weight_loader(param: nn.Parameter, loader: WeightLoader) -> None:
    param.weight_loader = loader  # type: ignore[attr-defined]


def get_weight_loader(param: nn.Parameter) -> WeightLoader:
    loader: WeightLoader = getattr(param, "weight_loader", default_weight_loader)
    return loader
