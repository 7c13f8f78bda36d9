from __future__ import annotations

import subprocess
import sys

from cluster.fleet_processes import session_members, stop_session

# A session leader that starts a child ignoring SIGTERM, then a grandchild, and sleeps.
SCRIPT = """
import signal, subprocess, sys, time
child = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
subprocess.Popen([sys.executable, "-c", child])
print("ready", flush=True)
time.sleep(60)
"""


def test_a_session_is_found_and_stopped_even_when_it_ignores_sigterm() -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    try:
        assert leader.stdout is not None and leader.stdout.readline() == "ready\n"
        while len(session_members(leader.pid)) < 3:
            pass  # the grandchild is on its way
        assert leader.pid in session_members(leader.pid)
        killed = stop_session(leader.pid, grace_s=1.0)
        leader.wait(timeout=5)
        assert session_members(leader.pid) == []
        assert len(killed) == 2  # the child ignoring SIGTERM, and its child (which inherits that)
    finally:
        if leader.poll() is None:
            leader.kill()
