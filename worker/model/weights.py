"""How a parameter receives checkpoint tensors: each parameter carries its own ``weight_loader``.

A layer that packs several checkpoint tensors into one parameter (q/k/v, gate/up), or keeps
only its tensor-parallel rank's part of one, attaches a loader that knows which part it keeps
and where it goes, so the model loader never special-cases layers.

Loaders receive a ``CheckpointTensor``, not a tensor: they ``narrow`` it to the block they keep
and only that block is read from disk, so no rank ever holds a weight it does not own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from worker.errors import ModelLoadError

ShardId = int | str | None
Reader = Callable[[tuple[slice, ...]], torch.Tensor]


class CheckpointTensor:
    """A checkpoint tensor, or a rectangular block of one, read only when ``load`` is called.

    ``read`` takes one slice per dimension (safetensors' ``get_slice(name).__getitem__``, or a
    tensor's own indexing for tensors already in memory).
    """

    def __init__(self, read: Reader, ranges: tuple[tuple[int, int], ...]) -> None:
        self._read = read
        self._ranges = ranges  # [start, stop) of the block along each dimension

    @classmethod
    def whole(cls, read: Reader, shape: Sequence[int]) -> CheckpointTensor:
        return cls(read, tuple((0, size) for size in shape))

    @classmethod
    def of(cls, tensor: torch.Tensor) -> CheckpointTensor:
        """A tensor already in memory (tests, converted checkpoints)."""
        return cls.whole(tensor.__getitem__, tensor.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self._ranges)

    def narrow(self, dim: int, start: int, length: int) -> CheckpointTensor:
        """Rows ``[start, start + length)`` along ``dim``, like ``torch.Tensor.narrow``."""
        lo, hi = self._ranges[dim]
        if start < 0 or length < 0 or lo + start + length > hi:
            raise ModelLoadError(
                f"cannot take [{start}, {start + length}) of dimension {dim} of shape "
                f"{list(self.shape)}"
            )
        ranges = list(self._ranges)
        ranges[dim] = (lo + start, lo + start + length)
        return CheckpointTensor(self._read, tuple(ranges))

    def load(self) -> torch.Tensor:
        return self._read(tuple(slice(start, stop) for start, stop in self._ranges))


WeightLoader = Callable[[nn.Parameter, CheckpointTensor, ShardId], None]


def expect_shape(loaded: CheckpointTensor, shape: Sequence[int]) -> None:
    """Raise unless the checkpoint tensor (before any narrowing) has ``shape``."""
    if loaded.shape != tuple(shape):
        raise ModelLoadError(f"shape mismatch: expected {list(shape)}, got {list(loaded.shape)}")


def copy_weight(target: torch.Tensor, loaded: CheckpointTensor) -> None:
    """Read ``loaded`` into ``target`` (converting dtype and device); shapes must match."""
    expect_shape(loaded, target.shape)
    target.copy_(loaded.load())


def default_weight_loader(param: nn.Parameter, loaded: CheckpointTensor, shard_id: ShardId) -> None:
    """The loader of a parameter that every rank stores whole, under one name."""
    if shard_id is not None:
        raise ModelLoadError(f"parameter stored whole has no shard {shard_id!r}")
    copy_weight(param.data, loaded)


def set_weight_loader(param: nn.Parameter, loader: WeightLoader) -> None:
    param.weight_loader = loader  # type: ignore[attr-defined]


def get_weight_loader(param: nn.Parameter) -> WeightLoader:
    loader: WeightLoader = getattr(param, "weight_loader", default_weight_loader)
    return loader


def mark_computed(param: nn.Parameter) -> None:
    """``param`` is written while another parameter loads (the scale of a weight quantized as
    it loads): no checkpoint tensor is expected for it, and one that is present is refused."""
    param.computed_at_load = True  # type: ignore[attr-defined]
    set_weight_loader(param, _refuse_computed)


def is_computed(param: nn.Parameter) -> bool:
    return bool(getattr(param, "computed_at_load", False))


def _refuse_computed(param: nn.Parameter, loaded: CheckpointTensor, shard_id: ShardId) -> None:
    raise ModelLoadError("is computed at load time here, yet the checkpoint holds it")
