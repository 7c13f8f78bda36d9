"""What dtype "auto" means on the device a replica runs on."""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this processor computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere torch
    emulates it, slower than float32."""
    cpu = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    return cpu.startswith("AVX512") and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )


def resolve_dtype(requested: str, device_type: str) -> str:
    """``requested`` unless it is "auto". On a GPU, "auto" stays "auto": the checkpoint's own
    dtype. On a CPU it is bfloat16 where the processor computes it natively, else float32,
    whatever the checkpoint holds."""
    if requested != "auto" or device_type != "cpu":
        return requested
    return "bfloat16" if cpu_has_native_bf16() else "float32"
