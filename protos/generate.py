"""Regenerates the Python stubs of protos/kvfleet/v1/*.proto (python -m protos.generate).

A test runs the same generation into a temporary directory and compares, so stubs that drift
from their .proto fail CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted((ROOT / "protos" / "kvfleet" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write the stubs of every .proto under ``out_dir``, mirroring the repository layout.
    protoc runs in a process of its own: grpc_tools bundles a protobuf runtime that aborts a
    process which also loads NIXL's (and the reverse)."""
    for proto in PROTOS:
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto.relative_to(ROOT)),
        ]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"protoc failed on {proto}: {done.stderr.strip()}")
    stubs = (out_dir / "protos" / "kvfleet" / "v1").glob("*_pb2*.py*")
    return sorted(p.relative_to(out_dir) for p in stubs)


if __name__ == "__main__":
    written = generate(ROOT)
    print("\n".join(str(p) for p in written))
    sys.exit(0)
