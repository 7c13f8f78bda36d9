"""Reading tensors from a Hugging Face safetensors checkpoint, one tensor at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from worker.errors import ModelLoadError

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


def iter_tensors(path: Path, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor in one safetensors file, reading each only when
    asked for so at most one tensor of the file is held at a time."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            names = list(f.keys())
            for name in names:
                yield name, _read(f, path, name)
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: unreadable safetensors file: {e}") from e


def _read(f: safe_open, path: Path, name: str) -> torch.Tensor:
    try:
        tensor: torch.Tensor = f.get_tensor(name)
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: cannot read tensor {name!r}: {e}") from e
    return tensor
