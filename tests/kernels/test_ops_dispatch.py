"""kernels.ops picks Triton for CUDA tensors and the torch reference otherwise, and imports
without Triton."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kernels import ops
from tests.kernels.helpers import INTERPRETING


def test_importing_ops_does_not_import_triton() -> None:
    code = "import sys, kernels, kernels.ops; assert 'triton' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_tensors_run_the_reference() -> None:
    x = torch.randn(3, 8)
    assert not ops.uses_triton(x)
    # Interpreted or not, nothing on CPU goes through a Triton module.
    assert torch.equal(ops.silu_and_mul(x), torch.nn.functional.silu(x[:, :4]) * x[:, 4:])


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETING, reason="needs compiled kernels on a CUDA GPU")
def test_cuda_tensors_run_triton() -> None:
    x = torch.randn(3, 8, device="cuda")
    assert ops.uses_triton(x)
    ops.silu_and_mul(x)
    assert "kernels.activation_triton" in sys.modules
