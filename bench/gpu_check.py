"""Everything only a GPU shows, in one command: ``make gpu-check`` (``python3 -m bench.gpu_check``).

Runs, each as a subprocess with its own time limit and its output in one log folder:

- the Triton kernel tests, compiled (fp32, fp16 and bf16; not the interpreter);
- the CUDA-graph tests (captured decode steps give the eager tokens);
- the compiled-step test (graphs of the torch.compile'd forward give the eager tokens);
- ``bench.kernels`` and ``bench.gpu_decode`` with CUDA graphs and with ``--eager``, and (quick)
  with int8 and fp8 weights.

Meant for a lent machine with PyTorch, Triton and the CUDA toolkit but no Ray, no network and
no ``make venv``: it uses the Python it is started with and needs nothing beyond pytest and
what the engine imports. Without a CUDA device it says so and exits 0 with null figures. The
whole check is sized to stay under 10 minutes on one GPU. Last line: one JSON object with every
figure, the failed steps by name, and where the logs are.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Test files whose cases need compiled Triton kernels or CUDA graphs (none needs Ray).
KERNEL_TESTS = (
    "tests/kernels/test_activation_triton.py",
    "tests/kernels/test_attention_triton.py",
    "tests/kernels/test_block_copy_triton.py",
    "tests/kernels/test_kv_store_triton.py",
    "tests/kernels/test_norm_triton.py",
    "tests/kernels/test_rope_triton.py",
    "tests/kernels/test_ops_dispatch.py",
    "tests/kernels/test_quant_matmul_triton.py",
    "tests/kernels/test_kv_quant_triton.py",
)
CUDA_GRAPH_TESTS = ("tests/worker/test_cuda_graphs.py",)


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]
    timeout_s: int
    kind: str  # "pytest": counts of passed/failed; "bench": its last line's JSON


PYTEST = ("-m", "pytest", "-q", "-p", "no:cacheprovider")
QUICK_DECODE = ("-m", "bench.gpu_decode", "--quick")
STEPS = (
    Step("kernel_tests", (*PYTEST, *KERNEL_TESTS), 120, "pytest"),
    Step("cuda_graph_tests", (*PYTEST, "-k", "not compiled", *CUDA_GRAPH_TESTS), 60, "pytest"),
    Step("compiled_step_tests", (*PYTEST, "-k", "compiled", *CUDA_GRAPH_TESTS), 90, "pytest"),
    Step("kernels", ("-m", "bench.kernels"), 60, "bench"),
    Step("gpu_decode_graphs", ("-m", "bench.gpu_decode"), 90, "bench"),
    Step("gpu_decode_eager", ("-m", "bench.gpu_decode", "--eager"), 60, "bench"),
    Step("gpu_decode_int8", (*QUICK_DECODE, "--quantization", "int8"), 60, "bench"),
    Step("gpu_decode_fp8", (*QUICK_DECODE, "--quantization", "fp8"), 60, "bench"),
)  # fmt: skip


def pytest_counts(output: str) -> dict[str, int]:
    """pytest's summary line ("3 passed, 1 failed, 2 skipped in 4.1s") as counts."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", output):
        counts["errors" if word.startswith("error") else word] += int(number)
    return counts


def last_json(output: str) -> dict[str, object] | None:
    for line in reversed(output.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def run_step(step: Step, logs: Path) -> tuple[object, bool]:
    """(its figures, whether it passed); its whole output goes to logs/NAME.log."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path[1:]])}
    env.pop("TRITON_INTERPRET", None)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, *step.args],
            capture_output=True,
            text=True,
            timeout=step.timeout_s,
            env=env,
        )
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        parts = [
            p.decode(errors="replace") if isinstance(p, bytes) else p
            for p in (exc.stdout, exc.stderr)
            if p
        ]
        output = "".join(parts) + f"\ntimed out after {step.timeout_s} s"
        code = -1
    elapsed = time.perf_counter() - start
    (logs / f"{step.name}.log").write_text(output)
    print(f"{step.name}: exit {code} in {elapsed:.0f} s", flush=True)
    if step.kind == "pytest":
        counts = pytest_counts(output)
        # Every case skipped (no Triton, say) checks nothing: that is a failure here.
        ok = code == 0 and counts["failed"] == counts["errors"] == 0 and counts["passed"] > 0
        return counts, ok
    figures = last_json(output)
    return figures, code == 0 and figures is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--logs", type=Path, default=None, help="log folder (default: $OUT, or gpu-check-logs)"
    )
    args = parser.parse_args()  # fmt: skip
    logs = args.logs or Path(os.environ.get("OUT") or "gpu-check-logs")
    logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "logs": str(logs)}
    if not torch.cuda.is_available():
        result["gpu"] = None
        result["reason"] = "no CUDA device: nothing to check here"
        result.update({step.name: None for step in STEPS})
        result["failed"] = []
        print(json.dumps(result))
        return
    result["gpu"] = torch.cuda.get_device_name(0)
    result["torch"] = torch.__version__
    start = time.perf_counter()
    failed = []
    for step in STEPS:
        figures, ok = run_step(step, logs)
        result[step.name] = figures
        if not ok:
            failed.append(step.name)
    result["failed"] = failed
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    (logs / "figures.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
