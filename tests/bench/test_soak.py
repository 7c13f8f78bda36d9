"""The short soak, as CI runs it: a replica killed, Redis restarted and the router restarted
under a steady load through both front doors lose no token and leak no KV block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_quick_soak_loses_no_token_and_leaks_no_block() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--quick"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["tokens_lost"] == 0 and figures["leaked_blocks"] == 0
    assert set(figures["fault_times_s"]) == {
        "replica_killed",
        "redis_restarted",
        "router_restarted",
    }
    # Only clients of the restarting router may fail (it is briefly not listening).
    failed = figures["requests_failed_by_cause"]
    assert sum(failed.values()) <= 0.1 * figures["requests_sent"], failed
    assert all(cause in ("grpc:UNAVAILABLE", "http:APIConnectionError") for cause in failed)
