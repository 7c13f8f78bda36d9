"""`kvfleet up` and `kvfleet down`: start the fleet in a background process, stop it."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cluster.supervisor import ERROR_FILE, LOG_FILE, STATE_FILE, RunState, fleet_config
from worker.errors import KVFleetError

START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


class FleetError(KVFleetError):
    """The fleet could not be started or stopped; the message says why."""


def up(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    running = running_state(run_dir)
    if running is not None:
        raise FleetError(
            f"already up (pid {running.pid}, router on {running.target}); `kvfleet down` first"
        )
    fleet_config(args)  # bad options fail here, before a process starts
    _check_port_free(args.host, args.port)
    if args.http_port:
        _check_port_free(args.host, args.http_port)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    command = [sys.executable, "-m", "cluster.supervisor", *_passthrough(args)]
    with open(run_dir / LOG_FILE, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while (state := RunState.read(run_dir)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.terminate()
            error = run_dir / ERROR_FILE
            detail = error.read_text() if error.exists() else (run_dir / LOG_FILE).read_text()
            raise FleetError(f"the fleet did not start:\n{detail[-3000:]}")
        time.sleep(0.2)
    print(
        f"kvfleet up: router on {state.target} (gRPC)"
        + (f" and http://{state.http_target} (OpenAI HTTP)" if state.http_target else "")
        + f", {args.replicas} replicas of {args.model}, "
        f"Redis at {state.redis_url} (pid {state.pid}; log {run_dir / LOG_FILE})"
    )
    return 0


def down(args: argparse.Namespace) -> int:
    state = running_state(args.run_dir)
    if state is None:
        print("kvfleet down: nothing is running")
        return 0
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while process_alive(state.pid):
        if time.monotonic() > deadline:
            os.killpg(state.pid, signal.SIGKILL)
            raise FleetError(f"pid {state.pid} did not stop in {STOP_TIMEOUT_S:.0f} s; killed")
        time.sleep(0.2)
    print(f"kvfleet down: stopped pid {state.pid}")
    return 0


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        # As the gRPC server binds: connections of a previous fleet in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise FleetError(f"cannot serve on {host}:{port}: {exc.strerror}") from None


def running_state(run_dir: Path) -> RunState | None:
    """The state of a fleet that is still running; a stale file (killed process) is removed."""
    state = RunState.read(run_dir)
    if state is not None and not process_alive(state.pid):
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        return None
    return state


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (not merely exists: the supervisor outlives `kvfleet up`, so once
    it exits it may linger as a zombie until something reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def _passthrough(args: argparse.Namespace) -> list[str]:
    """`kvfleet up`'s options (supervisor.add_arguments), as the supervisor's command line."""
    cli_only = {"command", "run"}  # set by the `kvfleet` parser itself
    return [
        f"--{name.replace('_', '-')}={value}"
        for name, value in vars(args).items()
        if name not in cli_only and value is not None
    ]
