"""The two 8-bit formats weights and the KV cache are stored in, and the symmetric per-row
quantization both use: a row's scale is its largest magnitude over the largest value the
format holds (127 for int8, which never uses -128; 448 for float8 e4m3), so the row spans the
whole format; int8 rounds to nearest, fp8 to its nearest representable value. An all-zero row
gets scale 1 (its values are 0 at any scale)."""

from __future__ import annotations

import torch

FORMATS: dict[str, torch.dtype] = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: torch.finfo(torch.float8_e4m3fn).max}
# Ada and Hopper convert e4m3 in hardware; older GPUs have no fp8 at all.
FP8_MIN_CAPABILITY = (8, 9)


def is_eight_bit(dtype: torch.dtype) -> bool:
    return dtype in _QMAX


def qmax(dtype: torch.dtype) -> float:
    """The largest quantized magnitude of an 8-bit dtype (127, or 448 for fp8)."""
    return _QMAX[dtype]


def quantize_last_dim(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [..., D] (any float dtype) → (``dtype`` [..., D], float32 scale [...]) with
    ``x ≈ quantized * scale[..., None]``; computed in float32."""
    limit = _QMAX[dtype]
    x = x.float()
    amax = x.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / limit, torch.ones_like(amax))
    scaled = (x / scale[..., None]).clamp(-limit, limit)
    if dtype == torch.int8:
        scaled = scaled.round()
    return scaled.to(dtype), scale


def require_fp8(device: torch.device, setting: str) -> None:
    """Raise ValueError, naming ``setting`` and the device, on a CUDA device older than compute
    capability 8.9; a CPU converts fp8 in torch."""
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        need = ".".join(map(str, FP8_MIN_CAPABILITY))
        raise ValueError(
            f"{setting} 'fp8' needs a GPU of compute capability {need} or newer; {device} "
            f"({torch.cuda.get_device_name(device)}) has {capability[0]}.{capability[1]}"
        )
