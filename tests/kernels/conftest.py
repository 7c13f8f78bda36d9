"""Kernel tests: each Triton kernel against its torch reference.

Without a GPU the kernels run in the Triton interpreter on CPU tensors, in float32 and float16
only (the interpreter computes garbage on bfloat16 arithmetic). With one they compile and run on
CUDA, and the bfloat16 cases, marked ``gpu``, run as well. Test modules named ``*_triton.py``
need Triton; where it is not installed they are reported skipped, and the rest still run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Before any kernel module is imported: @triton.jit reads this when it decorates.
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401

    TRITON_INSTALLED = True
except ImportError:
    TRITON_INSTALLED = False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (kernels compiled, bfloat16)")


class _NeedsTriton(pytest.Module):
    """A ``*_triton.py`` module where Triton is missing: reported skipped, never imported."""

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        pytest.skip("triton is not installed", allow_module_level=True)


def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    if TRITON_INSTALLED or not module_path.name.endswith("_triton.py"):
        return None
    return _NeedsTriton.from_parent(parent, path=module_path)
