"""`kvfleet up` and `kvfleet down`: start the fleet in a background process, stop it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from cluster import cluster_config
from cluster.cluster_config import ClusterConfig
from cluster.fleet_processes import leads_a_session, session_members, stop_session
from cluster.run_state import (
    CONFIG_FILE,
    ERROR_FILE,
    LAUNCH_FILE,
    LOG_FILE,
    STAGE_FILE,
    STATE_FILE,
    FleetError,
    Launch,
    RunState,
    process_alive,
    read_stage,
    running_state,
)

START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
POOL = "pools.colocated"
# The common keys of the cluster config, as `kvfleet up` flags (on top of --config FILE).
FLAG_KEYS = {
    "model": "model",
    "replicas": f"{POOL}.replicas",
    "tp": f"{POOL}.parallelism.tensor",
    "pp": f"{POOL}.parallelism.pipeline",
    "min_replicas": f"{POOL}.autoscaling.min_replicas",
    "max_replicas": f"{POOL}.autoscaling.max_replicas",
    "kv_cache_mb": f"{POOL}.engine.kv_cache_mb",
    "torch_threads": f"{POOL}.engine.torch_threads",
    "host": "router.host",
    "port": "router.grpc_port",
    "http_port": "router.http_port",
    "chat_template": "router.chat_template",
    "request_timeout_s": "router.request_timeout_s",
    "policy": "router.policy",
    "redis_url": "redis.url",
    "app_name": "app_name",
    "num_cpus": "ray.num_cpus",
    "ray_address": "ray.address",
}


def config_from(
    config_file: Path | None, assignments: list[str], flags: dict[str, Any]
) -> ClusterConfig:
    """The file (if any), then each ``--set KEY=VALUE``, then the flags that were given (a
    FLAG_KEYS name each); ConfigError names every bad key."""
    overrides = cluster_config.parse_set(assignments)
    for flag, value in flags.items():
        if value is not None:
            overrides[FLAG_KEYS[flag]] = str(value) if isinstance(value, Path) else value
    if config_file is not None:
        return cluster_config.load_file(config_file, overrides)
    return cluster_config.load(cluster_config.merge({}, overrides))


def up(config: ClusterConfig, run_dir: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    """Start the fleet in the background and wait, showing each stage, until it serves; a
    fleet not serving after ``timeout_s`` is stopped."""
    running = running_state(run_dir)
    if running is not None:
        raise FleetError(
            f"already up (pid {running.pid}, router on {running.target}); `kvfleet down` first"
        )
    launch = Launch.read(run_dir)
    if launch is not None:
        if session_members(launch.pid):
            raise FleetError(
                f"the fleet last started from {run_dir} (pid {launch.pid}) still has "
                "processes; `kvfleet down` first"
            )
        shutil.rmtree(launch.temp_dir, ignore_errors=True)  # a crashed fleet's files
    # Absolute paths: `kvfleet down` and the supervisor may run from another directory.
    router = config.router
    template = router.chat_template.resolve() if router.chat_template else None
    tokens = router.auth_tokens_file.resolve() if router.auth_tokens_file else None
    resolved = {"chat_template": template, "auth_tokens_file": tokens}
    config = config.model_copy(
        update={"model": config.model.resolve(), "router": router.model_copy(update=resolved)}
    )
    if config.ray.address is not None and config.redis.url is None:
        raise FleetError(
            "--ray-address joins a cluster whose replicas may run on other nodes, which a "
            "Redis on this machine's loopback would not reach: give --redis-url"
        )
    if config.ray.address is None and not (config.model / "config.json").is_file():
        raise FleetError(
            f"model {config.model}: no config.json there "
            "(make a demo model with `kvfleet demo-model DIR`)"
        )
    router = config.router
    _check_port_free(router.host, router.grpc_port)
    if router.http_port:
        _check_port_free(router.host, router.http_port)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (ERROR_FILE, STATE_FILE, STAGE_FILE):
        (run_dir / name).unlink(missing_ok=True)
    (run_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    # Short, under the system's temp: Ray puts its sockets there (a path of at most 107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="kvfleet-")
    command = [sys.executable, "-m", "cluster.supervisor", str(run_dir), temp_dir]
    with open(run_dir / LOG_FILE, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    Launch(process.pid, temp_dir).write(run_dir)
    try:
        state = _wait_until_serving(process, run_dir, timeout_s)
    except (FleetError, KeyboardInterrupt):  # Ctrl-C while it starts stops it too
        _stop_fleet(run_dir, grace_s=STOP_TIMEOUT_S)
        raise
    print(
        f"kvfleet up: router on {state.target} (gRPC)"
        + (f" and http://{state.http_target} (OpenAI HTTP)" if state.http_target else "")
        + f", {_replicas(config)} of {config.model}, "
        f"Redis at {state.redis_url} (pid {state.pid}; log {run_dir / LOG_FILE})"
    )


def down(run_dir: Path) -> None:
    """Stop everything `kvfleet up` started from ``run_dir``: ask the supervisor (it drains the
    replicas, up to their grace period), then stop whatever its session still holds, and
    remove its files; also after a crash."""
    launch = Launch.read(run_dir)
    if launch is None:
        print("kvfleet down: nothing is running")
        return
    crashed = not process_alive(launch.pid)
    left, killed = _stop_fleet(run_dir, grace_s=_drain_grace_s(run_dir) + STOP_TIMEOUT_S)
    if crashed:
        done = f"the supervisor (pid {launch.pid}) had exited; stopped the {len(left)} "
        done += "processes it left and removed its files"
    else:
        done = f"stopped pid {launch.pid}"
        if left:
            done += f" and {len(left)} processes Ray left behind"
    if killed:
        done += f" ({len(killed)} killed after ignoring SIGTERM)"
    print(f"kvfleet down: {done}")


def _wait_until_serving(
    process: subprocess.Popen[bytes], run_dir: Path, timeout_s: float
) -> RunState:
    """The supervisor's state once it serves, each stage shown meanwhile (on a terminal)."""
    console = Console(stderr=True)
    start = time.monotonic()
    with console.status("starting") as shown:
        while (state := RunState.read(run_dir)) is None:
            stage = read_stage(run_dir)
            failed = process.poll() is not None
            if failed or time.monotonic() - start > timeout_s:
                raise FleetError(_start_failure(run_dir, stage, timeout_s if not failed else None))
            shown.update(f"{stage} ({time.monotonic() - start:.0f} s)")
            time.sleep(0.2)
    return state


def _start_failure(run_dir: Path, stage: str, timed_out_s: float | None) -> str:
    """One line: the stage it failed in and why (the error's last line; the rest is logged)."""
    log = run_dir / LOG_FILE
    if timed_out_s is not None:
        return f"not serving after {timed_out_s:.0f} s, still {stage}; stopped it (log: {log})"
    error = run_dir / ERROR_FILE
    lines = (error.read_text() if error.exists() else log.read_text()).strip().splitlines()
    why = lines[-1] if lines else "it exited without a word"
    return f"the fleet did not start ({stage}): {why} (log: {log})"


def _stop_fleet(run_dir: Path, grace_s: float) -> tuple[list[int], list[int]]:
    """SIGTERM to the supervisor, then to what is left in its session (after a crash: all of
    it), SIGKILL to what ignores that; the files go, the logs stay. The processes left after
    the supervisor, and those killed."""
    launch = Launch.read(run_dir)
    if launch is None:
        return [], []
    # The pid may have been reused since a crash: ours leads its own session.
    if process_alive(launch.pid) and leads_a_session(launch.pid):
        os.kill(launch.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while process_alive(launch.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    left = session_members(launch.pid)
    killed = stop_session(launch.pid, grace_s=5.0)
    shutil.rmtree(launch.temp_dir, ignore_errors=True)
    for name in (LAUNCH_FILE, STATE_FILE, STAGE_FILE):
        (run_dir / name).unlink(missing_ok=True)
    return left, killed


def _drain_grace_s(run_dir: Path) -> float:
    """The pool's drain grace period, as the fleet was started (read as it is: the config is
    not validated again, its files may be gone)."""
    try:
        pool = json.loads((run_dir / CONFIG_FILE).read_text())["pools"]["colocated"]
        return float(pool["drain_grace_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        # As the gRPC server binds: connections of a previous fleet in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise FleetError(f"cannot serve on {host}:{port}: {exc.strerror}") from None


def _replicas(config: ClusterConfig) -> str:
    pools = config.pools.active().items()
    return ", ".join(f"{name} pool {pool.describe_scale()}" for name, pool in pools)
