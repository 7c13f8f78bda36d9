"""The router side loads neither torch nor Ray: a front door or a routing process stays light,
and the routing core can be tested and benchmarked alone."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import router

ROOT = Path(__file__).resolve().parents[2]


def test_importing_every_router_module_loads_neither_torch_nor_ray() -> None:
    modules = [m.name for m in pkgutil.walk_packages(router.__path__, "router.")]
    assert "router.grpc_api.service" in modules and "router.policy" in modules
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []
