"""Weight-only quantization of the linear layers: int8 or fp8 weights, one float32 scale per
output row.

Every linear layer of the decoder (q/k/v, o, gate/up, down; not the embedding or the LM head)
holds ``weight`` [out, in] as int8 or float8_e4m3fn and ``weight_scale`` [out] in float32, and
computes ``x @ (weight * weight_scale[:, None])^T`` (kernels.ops.quant_linear). Rows are
quantized as kernels/eight_bit.py does it for weights and the KV cache alike.

Quantized at load time from a float checkpoint, each tensor-parallel rank quantizes only the
block it keeps: a column-parallel rank its output rows, whose scales are exactly the whole
model's; a row-parallel rank its input columns, scaled per output row over those columns only.

A pre-quantized checkpoint (``python -m worker.model.quantize_checkpoint`` writes one) is a
Hugging Face safetensors checkpoint in which, for every linear layer ``<prefix>``:

    <prefix>.weight         int8 or float8_e4m3fn  [out, in]   round(W / scale[:, None])
    <prefix>.weight_scale   float32                [out]       max |W[row]| / 127 (448 for fp8)

with the other tensors (embedding, norms, biases, LM head) unchanged, and config.json saying

    "quantization_config": {"quant_method": "kvfleet", "weights": "int8"}   (or "fp8")

A row-parallel layer's scales there span its whole rows, so each rank keeps them whole and
narrows only the weight's columns; a column-parallel rank narrows the scales with its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels.eight_bit import FORMATS, quantize_last_dim, require_fp8
from worker.errors import ModelLoadError
from worker.model.weights import CheckpointTensor, expect_shape
from worker.model_config import WEIGHT_QUANTIZATIONS

QUANTIZED_DTYPES = FORMATS
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def quantize_rows(weight: torch.Tensor, weights: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` [out, in] (any float dtype) → (``weights``' dtype [out, in], float32 scale
    [out]) with ``weight ≈ quantized * scale[:, None]`` (kernels/eight_bit.py)."""
    return quantize_last_dim(weight, FORMATS[weights])


@dataclass(frozen=True)
class WeightQuantization:
    """How a model's linear layers hold their weights: ``weights`` ("int8" or "fp8"), and
    whether the checkpoint already holds them so (``prequantized``, with scale tensors) or they
    are quantized as they load."""

    weights: str
    prequantized: bool

    @property
    def dtype(self) -> torch.dtype:
        return QUANTIZED_DTYPES[self.weights]

    def fill(self, qweight: torch.Tensor, scale: torch.Tensor, block: CheckpointTensor) -> None:
        """Fill ``qweight`` (rows of a layer's quantized weight) from the checkpoint ``block``
        of the same shape: copied when pre-quantized (the scale then loads as a tensor of its
        own), else quantized here, writing each row's ``scale``."""
        expect_shape(block, qweight.shape)
        tensor = block.load()
        if self.prequantized:
            if tensor.dtype != self.dtype:
                raise ModelLoadError(
                    f"quantization_config.weights is {self.weights!r}, so the weight should be "
                    f"{self.dtype}, but it is {tensor.dtype}"
                )
            qweight.copy_(tensor)
            return
        if tensor.dtype not in _FLOAT_DTYPES:
            raise ModelLoadError(
                f"cannot quantize a {tensor.dtype} weight to {self.weights}; a quantized "
                f"checkpoint declares quantization_config in config.json"
            )
        quantized, row_scales = quantize_rows(tensor.to(qweight.device), self.weights)
        qweight.copy_(quantized)
        scale.copy_(row_scales)


def resolve_quantization(
    requested: str | None, checkpoint: str | None
) -> WeightQuantization | None:
    """The quantization to run: the checkpoint's own if it has one (``requested`` None or the
    same), else ``requested`` applied at load time. A request that contradicts the checkpoint
    raises ModelLoadError naming both; an unknown name raises ValueError."""
    if requested is not None and requested not in WEIGHT_QUANTIZATIONS:
        raise ValueError(
            f"quantization must be None or one of {', '.join(WEIGHT_QUANTIZATIONS)}, "
            f"got {requested!r}"
        )
    if checkpoint is None:
        return None if requested is None else WeightQuantization(requested, prequantized=False)
    if requested not in (None, checkpoint):
        raise ModelLoadError(
            f"quantization {requested!r} was asked for, but the checkpoint's "
            f"quantization_config.weights is {checkpoint!r}"
        )
    return WeightQuantization(checkpoint, prequantized=True)


def check_device_supports(weights: str, device: torch.device) -> None:
    """Raise ValueError for fp8 weights on a CUDA device older than compute capability 8.9.
    On a CPU fp8 runs dequantized by torch (slowly), so it is allowed."""
    if weights == "fp8":
        require_fp8(device, "quantization")


def weight_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters: weights in whatever dtype they are held, quantization
    scales, norms and biases, each counted once (a tied LM head is the embedding table). Of a
    model's linear layers alone: the sum over its ``QuantizableLinear`` modules."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
