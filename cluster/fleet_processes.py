"""The processes of one fleet: everything `kvfleet up` started runs in the session its
supervisor leads (Redis, Ray's GCS, raylet, agents and workers, the router), so a fleet whose
supervisor crashed is still found, and stopped, by that session id (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def session_members(session_id: int) -> list[int]:
    """Live processes (not zombies) in the session, its leader included."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # After "(comm) ": state, ppid, pgrp, session (comm may hold spaces and parentheses).
        state, _, _, session = stat.rsplit(") ", 1)[1].split()[:4]
        if int(session) == session_id and state != "Z":
            members.append(int(entry.name))
    return members


def leads_a_session(pid: int) -> bool:
    """Whether ``pid`` runs and leads its session (a supervisor does; a process that reused a
    dead supervisor's pid most likely does not)."""
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def stop_session(session_id: int, grace_s: float) -> list[int]:
    """SIGTERM every process in the session, SIGKILL those left after ``grace_s``; the pids
    that had to be killed."""
    _signal_all(session_members(session_id), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := session_members(session_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(left, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while session_members(session_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
