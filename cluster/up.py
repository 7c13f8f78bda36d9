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

from cluster import cluster_config
from cluster.cluster_config import ClusterConfig
from cluster.run_state import (
    CONFIG_FILE,
    ERROR_FILE,
    LOG_FILE,
    FleetError,
    RunState,
    process_alive,
    running_state,
)

START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
POOL = "pools.colocated"
# The common keys of the cluster config as flags of `kvfleet up` (on top of --config FILE).
FLAGS = {
    "model": ("model", Path, "model directory"),
    "replicas": (f"{POOL}.replicas", int, "replicas (the initial count when autoscaling)"),
    "tp": (f"{POOL}.parallelism.tensor", int, "tensor-parallel ranks per replica"),
    "pp": (f"{POOL}.parallelism.pipeline", int, "pipeline stages per replica"),
    "min_replicas": (f"{POOL}.autoscaling.min_replicas", int, "autoscale, down to this"),
    "max_replicas": (f"{POOL}.autoscaling.max_replicas", int, "autoscale, up to this"),
    "kv_cache_mb": (f"{POOL}.engine.kv_cache_mb", int, "KV cache per rank, in MiB"),
    "torch_threads": (f"{POOL}.engine.torch_threads", int, "intra-op threads per replica"),
    "host": ("router.host", str, "the front doors' address"),
    "port": ("router.grpc_port", int, "the gRPC front door's port"),
    "http_port": ("router.http_port", int, "the OpenAI HTTP API's port (0: none)"),
    "chat_template": ("router.chat_template", str, "a Jinja chat template file"),
    "request_timeout_s": ("router.request_timeout_s", float, "abort HTTP requests after this"),
    "policy": ("router.policy", str, "kvfleet or round_robin"),
    "redis_url": ("redis.url", str, "default: start redis-server on loopback"),
    "app_name": ("app_name", str, "the Serve application's name"),
    "num_cpus": ("ray.num_cpus", int, "CPUs of the local Ray"),
    "ray_address": ("ray.address", str, "an existing Ray cluster's HOST:PORT (default: local)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a cluster config (YAML); flags override it")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="set any key of the cluster config, e.g. pools.colocated.replicas=3 (repeatable)",
    )  # fmt: skip
    for flag, (key, kind, help_) in FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", type=kind, help=f"{help_} ({key})")
    parser.add_argument("--run-dir", type=Path, default=Path(".kvfleet/run"))


def config_from_args(args: argparse.Namespace) -> ClusterConfig:
    """The --config file (if any), then --set, then the flags; ConfigError names bad keys."""
    overrides = cluster_config.parse_set(args.set)
    for flag, (key, _, _) in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    if args.config is not None:
        return cluster_config.load_file(args.config, overrides)
    return cluster_config.load(cluster_config.merge({}, overrides))


def up(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    running = running_state(run_dir)
    if running is not None:
        raise FleetError(
            f"already up (pid {running.pid}, router on {running.target}); `kvfleet down` first"
        )
    config = config_from_args(args)  # bad options fail here, before a process starts
    config = config.model_copy(update={"model": config.model.resolve()})
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
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    (run_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    command = [sys.executable, "-m", "cluster.supervisor", str(run_dir)]
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
        + f", {_replicas(config)} of {config.model}, "
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


def _replicas(config: ClusterConfig) -> str:
    scaling = config.pool.autoscaling
    if scaling is None:
        return f"{config.pool.replicas} replicas"
    return (
        f"{config.pool.replicas} replicas (autoscaling {scaling.min_replicas}.."
        f"{scaling.max_replicas})"
    )
