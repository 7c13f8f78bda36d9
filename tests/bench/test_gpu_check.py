"""The GPU check runs what it names, reads what its steps print, and on a machine without a GPU
says so instead of failing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_file_it_runs_exists() -> None:
    for path in (*gpu_check.KERNEL_TESTS, *gpu_check.CUDA_GRAPH_TESTS):
        assert (ROOT / path).is_file(), path


def test_it_reads_pytest_summaries_and_bench_figures() -> None:
    summary = "....F.\n1 failed, 5 passed, 2 skipped, 1 error in 3.2s"
    assert gpu_check.pytest_counts(summary) == {
        "passed": 5,
        "failed": 1,
        "errors": 1,
        "skipped": 2,
    }
    assert gpu_check.last_json('warming up\n{"tok_s": 1.5}\n') == {"tok_s": 1.5}
    assert gpu_check.last_json("Traceback (most recent call last):\n  boom") is None


def test_without_a_gpu_it_reports_nothing_to_check(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("on a GPU the real check is `make gpu-check`")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--logs", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["gpu"] is None and figures["failed"] == []
    assert figures["kernels"] is None and figures["compiled_step_tests"] is None
