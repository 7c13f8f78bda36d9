"""Convert a full-precision checkpoint into a pre-quantized one, in the layout documented in
worker/model/quantization.py:

    python -m worker.model.quantize_checkpoint SRC_DIR DST_DIR --weights int8|fp8

Every file of SRC_DIR is copied to DST_DIR (which must be new or empty); config.json gains
``quantization_config``, and in each safetensors file every linear layer's weight is replaced by
its quantized rows with its ``weight_scale`` beside it (the shard index, if any, lists the
scales). Loading the result gives the same model as quantizing SRC_DIR at load time on one rank.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from worker.errors import ModelLoadError
from worker.model.checkpoint import INDEX_FILE, checkpoint_files
from worker.model.linear import QuantizableLinear
from worker.model.llama import LlamaForCausalLM
from worker.model.loader import param_name_of
from worker.model.quantization import quantize_rows
from worker.model_config import QUANT_METHOD, WEIGHT_QUANTIZATIONS, ModelConfig

CONFIG_FILE = "config.json"
SCALE_SUFFIX = "_scale"  # <prefix>.weight -> <prefix>.weight_scale


def quantize_checkpoint(src: Path, dst: Path, weights: str) -> int:
    """Write the ``weights``-quantized copy of checkpoint ``src`` into ``dst``; returns how many
    tensors were quantized. Raises ModelLoadError for a source that cannot be read or is
    already quantized, ValueError for an unknown ``weights`` or a ``dst`` that is not empty or
    lies inside ``src``."""
    if weights not in WEIGHT_QUANTIZATIONS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_QUANTIZATIONS)}")
    config = ModelConfig.from_dir(src)
    if config.checkpoint_quantization is not None:
        raise ModelLoadError(f"{src}: already quantized ({config.checkpoint_quantization})")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst}: exists and is not an empty directory")
    if dst.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"{dst}: inside the source directory {src}, which is copied into it")
    files = checkpoint_files(src)
    is_linear_weight = _linear_weight_filter(config)
    dst.mkdir(parents=True, exist_ok=True)
    quantized: dict[str, str] = {}  # name of each quantized tensor -> its file
    for path in files:
        try:
            tensors = load_file(path)
        except SafetensorError as e:
            raise ModelLoadError(f"{path}: unreadable safetensors file: {e}") from e
        for name in [name for name in tensors if is_linear_weight(name)]:
            tensors[name], tensors[name + SCALE_SUFFIX] = quantize_rows(tensors[name], weights)
            quantized[name] = path.name
        save_file(tensors, dst / path.name, metadata={"format": "pt"})
    _write_config(src, dst, weights)
    if (src / INDEX_FILE).is_file():
        _write_index(src, dst, quantized)
    converted = {CONFIG_FILE, INDEX_FILE, *(path.name for path in files)}
    for path in src.iterdir():
        if path.name in converted:
            continue
        if path.is_dir():
            shutil.copytree(path, dst / path.name)
        else:
            shutil.copy2(path, dst / path.name)
    return len(quantized)


def _linear_weight_filter(config: ModelConfig) -> Callable[[str], bool]:
    """Whether a checkpoint tensor is a linear layer's weight: the model, built on no device,
    says which of its parameters are (the loader's own name mapping finds the parameter)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    linear = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, QuantizableLinear)
    }
    return lambda name: param_name_of(name, model)[0] in linear


def _write_config(src: Path, dst: Path, weights: str) -> None:
    raw = json.loads((src / CONFIG_FILE).read_text())
    raw["quantization_config"] = {"quant_method": QUANT_METHOD, "weights": weights}
    (dst / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n")


def _write_index(src: Path, dst: Path, quantized: dict[str, str]) -> None:
    index = json.loads((src / INDEX_FILE).read_text())
    for name, file in quantized.items():
        index["weight_map"][name + SCALE_SUFFIX] = file
    total = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
    index.setdefault("metadata", {})["total_size"] = total
    (dst / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m worker.model.quantize_checkpoint", description=__doc__.split("\n")[0]
    )
    parser.add_argument("src", type=Path, help="full-precision Hugging Face checkpoint directory")
    parser.add_argument("dst", type=Path, help="new (or empty) directory to write")
    parser.add_argument("--weights", required=True, choices=WEIGHT_QUANTIZATIONS)
    args = parser.parse_args(argv)
    try:
        count = quantize_checkpoint(args.src, args.dst, args.weights)
    except (ModelLoadError, ValueError, OSError) as e:
        sys.exit(f"{parser.prog}: error: {e}")
    print(f"{args.dst}: {count} linear weights quantized to {args.weights}")


if __name__ == "__main__":
    main()
