"""The process `kvfleet up` leaves running: Redis (unless given a URL), a local Ray, the Serve
application and the gRPC router, all stopped together on SIGTERM (`kvfleet down`).

It writes ``state.json`` into its run directory once the router serves, or ``error.txt`` if
start-up failed, which is how `kvfleet up` learns the outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import serve

from cluster import http_options
from cluster.app import FleetConfig, deploy
from cluster.front_door import start_front_door
from cluster.redis_server import RedisServer
from worker.config import EngineConfig

STATE_FILE = "state.json"
ERROR_FILE = "error.txt"
LOG_FILE = "supervisor.log"


@dataclass(frozen=True)
class RunState:
    """What a running fleet left in its run directory."""

    pid: int
    target: str  # host:port of the gRPC router
    http_target: str  # host:port of its OpenAI HTTP API; "" when off
    ray_address: str
    redis_url: str
    app_name: str

    @classmethod
    def read(cls, run_dir: Path) -> RunState | None:
        path = run_dir / STATE_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def write(self, run_dir: Path) -> None:
        tmp = run_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.__dict__))
        tmp.replace(run_dir / STATE_FILE)  # readers never see half a file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `kvfleet up`, which passes them through to this process."""
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    http_options.add_arguments(parser, default_port=8000)
    parser.add_argument("--redis-url", default=None, help="default: start redis-server here")
    parser.add_argument("--policy", default="kvfleet", choices=["kvfleet", "round_robin"])
    parser.add_argument("--app-name", default="kvfleet")
    parser.add_argument("--num-cpus", type=int, default=None, help="for the local Ray")
    parser.add_argument("--kv-cache-mb", type=int, default=64, help="KV cache per replica, in MiB")
    parser.add_argument("--torch-threads", type=int, default=1, help="per replica")
    parser.add_argument("--run-dir", type=Path, default=Path(".kvfleet/run"))


def fleet_config(args: argparse.Namespace) -> FleetConfig:
    """Validates the options (ValueError names the bad one) before anything starts; the Redis
    URL is filled in once Redis runs."""
    if not (args.model / "config.json").is_file():
        raise ValueError(
            f"--model {args.model}: no config.json there "
            "(make a demo model with `kvfleet demo-model DIR`)"
        )
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    http_options.from_args(args)
    if args.kv_cache_mb < 1:
        raise ValueError(f"--kv-cache-mb must be at least 1, got {args.kv_cache_mb}")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ValueError(f"--num-cpus must be at least 1, got {args.num_cpus}")
    engine = EngineConfig(model=args.model.resolve(), kv_cache_bytes=args.kv_cache_mb << 20)
    return FleetConfig(
        engine=engine,
        app_name=args.app_name,
        num_replicas=args.replicas,
        policy=args.policy,
        redis_url=args.redis_url,
        replica_cpus=0.0,  # CPU replicas share the cores; torch_threads bounds each
        torch_threads=args.torch_threads,
    )


async def _serve(config: FleetConfig, args: argparse.Namespace) -> None:
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        deploy(config)
        http = http_options.from_args(args)
        router = await start_front_door(config.app_name, args.host, args.port, http=http)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        RunState(
            pid=os.getpid(),
            target=f"{args.host}:{args.port}",
            http_target=f"{args.host}:{http.port}" if http.port else "",
            ray_address=ray.get_runtime_context().gcs_address,
            redis_url=config.redis_url or "",
            app_name=config.app_name,
        ).write(args.run_dir)
        await stopping.wait()
        await router.stop()
    finally:
        serve.shutdown()
        ray.shutdown()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum} while starting")  # unwinds the finally blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = parser.parse_args()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    redis = None
    try:
        config = fleet_config(args)
        if config.redis_url is None:
            redis = RedisServer()
            redis.start()
            config = dataclasses.replace(config, redis_url=redis.url)
        asyncio.run(_serve(config, args))
    except BaseException:
        (args.run_dir / ERROR_FILE).write_text(traceback.format_exc())
        raise
    finally:
        (args.run_dir / STATE_FILE).unlink(missing_ok=True)
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
