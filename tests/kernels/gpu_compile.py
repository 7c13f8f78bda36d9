"""Compile every Triton kernel for an H100 (sm_90) on a machine without a GPU, with the arguments
its wrapper really passes: ``python -m tests.kernels.gpu_compile``.

The interpreter never runs Triton's compiler, so it cannot see what only compiled code rejects
(loop-carried types, ``tl.dot`` shapes, constexpr misuse) or how many registers a kernel needs.
Here each wrapper runs on CPU tensors at Llama-3-8B shapes in bfloat16 while its kernels are
replaced by recorders; each recorded launch is then compiled down to a cubin by the ptxas that
ships with Triton. Prints one line per kernel with its registers and spill stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import (
    activation_triton,
    attention_decode_triton,
    attention_triton,
    block_copy_triton,
    kv_store_triton,
    norm_triton,
    rope_triton,
)
from tests.kernels.helpers import paged_step

H100 = GPUTarget("cuda", 90, 32)
LAUNCH_OPTIONS = ("num_warps", "num_stages")
MODULES = [
    activation_triton,
    attention_decode_triton,
    attention_triton,
    block_copy_triton,
    kv_store_triton,
    norm_triton,
    rope_triton,
]


class Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, kernel: Any, launches: list[tuple[Any, tuple[Any, ...], dict[str, Any]]]):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def record_launches(workload: Callable[[], None]) -> list[tuple[Any, tuple[Any, ...], dict]]:
    launches: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
    originals: list[tuple[ModuleType, str, Any]] = []
    for module in MODULES:
        for name in dir(module):
            if name.endswith("_kernel"):
                originals.append((module, name, getattr(module, name)))
                setattr(module, name, Recorder(getattr(module, name), launches))
    try:
        workload()
    finally:
        for module, name, kernel in originals:
            setattr(module, name, kernel)
    return launches


def llama3_8b_workload() -> None:
    bf16 = torch.bfloat16
    heads, kv_heads, head_dim = 32, 8, 128
    # Decodes with 16 splits, 2 splits and 1 split, then a prefill chunk beside a decode.
    for work in ([(2047, 1)] * 4, [(2047, 1)] * 64, [(99, 1)] * 8, [(1536, 512), (300, 1)]):
        num_blocks, meta = paged_step(work)
        tokens = sum(q for _, q in work)
        query = torch.zeros(tokens, heads, head_dim, dtype=bf16)
        cache = torch.zeros(2, num_blocks, meta.block_size, kv_heads, head_dim, dtype=bf16)
        attention_triton.paged_attention_triton(query, cache, meta, head_dim**-0.5)
    key = torch.zeros(16, kv_heads, head_dim, dtype=bf16)
    kv_store_triton.store_kv_triton(key, key, cache, torch.arange(16))
    x, weight = torch.zeros(16, 4096, dtype=bf16), torch.zeros(4096, dtype=bf16)
    norm_triton.rms_norm_triton(x, weight, 1e-5)
    norm_triton.fused_add_rms_norm_triton(x, x, weight, 1e-5)
    query = torch.zeros(16, heads, head_dim, dtype=bf16)
    cos_sin = torch.zeros(64, head_dim)
    rope_triton.rotary_embedding_triton(torch.arange(16), query, key, cos_sin)
    activation_triton.silu_and_mul_triton(torch.zeros(16, 2 * 14336, dtype=bf16))
    buffer = block_copy_triton.gather_blocks_triton(cache, torch.arange(4))
    block_copy_triton.scatter_blocks_triton(buffer, cache, torch.arange(4))


def compile_for_h100(kernel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Compile one recorded launch the way Triton would specialise it (ints equal to 1 become
    constants) for sm_90."""
    options = {k: v for k, v in kwargs.items() if k in LAUNCH_OPTIONS}
    values = dict(zip(kernel.arg_names, args, strict=False))
    values.update({k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS})
    signature, constants = {}, {}
    for name in kernel.arg_names:
        value = values[name]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _triton_type(value.dtype)
        elif name in kwargs or value == 1:
            signature[name], constants[name] = "constexpr", value
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
    return triton.compile(ASTSource(kernel, signature, constants), target=H100, options=options)


def resource_usage(compiled: Any) -> str:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        dump = subprocess.run(
            [cuobjdump, "--dump-resource-usage", cubin.name], capture_output=True, text=True
        ).stdout
    fields = [f for line in dump.splitlines() if "REG:" in line for f in line.split()]
    return " ".join(f for f in fields if f.startswith(("REG:", "STACK:")))


def _triton_type(dtype: torch.dtype) -> str:
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    return names.get(dtype) or {torch.int32: "i32", torch.int64: "i64"}[dtype]


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run without TRITON_INTERPRET=1: the interpreter does not compile")
    seen = set()
    for kernel, args, kwargs in record_launches(llama3_8b_workload):
        compiled = compile_for_h100(kernel, args, kwargs)
        key = (kernel.__name__, compiled.hash)
        if key not in seen:
            seen.add(key)
            print(f"{kernel.__name__:28} {resource_usage(compiled)}", flush=True)


if __name__ == "__main__":
    main()
