"""Native CPU kernels: C++ sources in kernels/csrc, compiled on first use, loaded with ctypes.

A kernel library is built once per source, compiler flags and processor (it is compiled for the
machine it runs on), into ``$KVFLEET_CACHE_DIR/native`` (default ``~/.cache/kvfleet/native``),
and reused by every later process. The build takes about a second and needs only a C++
compiler (``$CXX``, else ``c++``), which torch.compile on CPU needs too. Where none works the
library is None, the reason is logged once, and callers keep their torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=c++17")
BUILD_TIMEOUT_S = 120


def cache_dir() -> Path:
    root = os.environ.get("KVFLEET_CACHE_DIR") or Path.home() / ".cache" / "kvfleet"
    return Path(root) / "native"


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled library of ``kernels/csrc/NAME.cpp``, built if needed; None if it cannot
    be built or loaded here (logged once)."""
    try:
        return ctypes.CDLL(str(_build(name)))
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        log.warning("native kernel %s unavailable, using the torch path: %s", name, exc)
        return None


def _build(name: str) -> Path:
    source = SOURCES / f"{name}.cpp"
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    key = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(FLAGS).encode(), compiler.encode(), _cpu_id()):
        key.update(part)
    target = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place, so concurrent builders never load a
    # half-written library.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        done = subprocess.run(
            [compiler, *FLAGS, str(source), "-o", str(partial)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {source.name}: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    log.info("built native kernel %s", target)
    return target


def _cpu_id() -> bytes:
    """What -march=native compiles for: the processor's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor().encode()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.startswith(wanted)})).encode()
