"""What a fleet started by `kvfleet up` keeps in its run directory: the config it runs, its
state once it serves, its log, and the error that stopped it from starting."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from worker.errors import KVFleetError

CONFIG_FILE = "cluster.json"  # the validated cluster config, written by `kvfleet up`
STATE_FILE = "state.json"
ERROR_FILE = "error.txt"
LOG_FILE = "supervisor.log"
ROUTER_LOG_FILE = "router.log"
LAUNCH_FILE = "launch.json"  # written by `kvfleet up` once the supervisor is started
STAGE_FILE = "stage.txt"  # what the supervisor is doing while it starts


class FleetError(KVFleetError):
    """The fleet could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class RunState:
    """What a running fleet left in its run directory."""

    pid: int
    target: str  # host:port of the gRPC router
    http_target: str  # host:port of its OpenAI HTTP API; "" when off
    ray_address: str
    redis_url: str
    app_name: str
    redis_pid: int  # 0: an external Redis
    router_pid: int
    router_restarts: int  # times the supervisor restarted the router after it exited

    def with_router(self, pid: int, restarts: int) -> RunState:
        return dataclasses.replace(self, router_pid=pid, router_restarts=restarts)

    @classmethod
    def read(cls, run_dir: Path) -> RunState | None:
        path = run_dir / STATE_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def write(self, run_dir: Path) -> None:
        _write_atomically(run_dir / STATE_FILE, json.dumps(self.__dict__))


@dataclass(frozen=True)
class Launch:
    """What `kvfleet down` needs to stop a fleet, whether it serves, is still starting, or its
    supervisor crashed: the supervisor's pid (the session of all its processes) and the
    directory of Ray's and Redis's files."""

    pid: int
    temp_dir: str

    @classmethod
    def read(cls, run_dir: Path) -> Launch | None:
        path = run_dir / LAUNCH_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def write(self, run_dir: Path) -> None:
        _write_atomically(run_dir / LAUNCH_FILE, json.dumps(self.__dict__))


def running_state(run_dir: Path) -> RunState | None:
    """The state of a fleet whose supervisor runs and serves; None otherwise (a crashed
    fleet's files stay for `kvfleet down` to clean up after)."""
    state = RunState.read(run_dir)
    return state if state is not None and process_alive(state.pid) else None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (not merely exists: the supervisor outlives `kvfleet up`, so once
    it exits it may linger as a zombie until something reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def write_stage(run_dir: Path, stage: str) -> None:
    _write_atomically(run_dir / STAGE_FILE, stage)


def read_stage(run_dir: Path) -> str:
    path = run_dir / STAGE_FILE
    return path.read_text() if path.exists() else "starting"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # readers never see half a file
