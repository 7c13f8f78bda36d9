"""Reading tensors from a Hugging Face safetensors checkpoint, one block of one tensor at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from worker.errors import ModelLoadError
from worker.model.weights import CheckpointTensor

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of ``model_dir``: ``model.safetensors``, or else every shard named
    by ``model.safetensors.index.json`` (each of which must exist)."""
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return [single]
    index = model_dir / INDEX_FILE
    if not index.is_file():
        raise ModelLoadError(f"{model_dir}: no {SINGLE_FILE} and no {INDEX_FILE}")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shard_names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{index}: cannot read JSON: {e}") from e
    except (KeyError, TypeError, AttributeError):
        raise ModelLoadError(f"{index}: missing or malformed 'weight_map'") from None
    shards = [model_dir / name for name in shard_names]
    for shard in shards:
        if not shard.is_file():
            raise ModelLoadError(f"{index}: references shard {shard.name}, which does not exist")
    return shards


def iter_tensors(path: Path) -> Iterator[tuple[str, CheckpointTensor]]:
    """Yield ``(name, tensor)`` for every tensor in one safetensors file. Nothing is read until
    a tensor's ``load``, and then only the block it was narrowed to: a rank reads its own shard
    of each weight and skips other stages' weights without touching them."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = list(f.keys())
            for name in names:
                yield name, _lazy(f, path, name)
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: unreadable safetensors file: {e}") from e


def _lazy(f: safe_open, path: Path, name: str) -> CheckpointTensor:
    try:
        part = f.get_slice(name)
        shape = part.get_shape()
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: cannot read tensor {name!r}: {e}") from e

    def read(index: tuple[slice, ...]) -> torch.Tensor:
        try:
            tensor: torch.Tensor = part[index]
        except (SafetensorError, OSError) as e:
            # The loader names the file and the tensor around this.
            raise ModelLoadError(f"cannot read: {e}") from e
        return tensor

    return CheckpointTensor.whole(read, shape)
