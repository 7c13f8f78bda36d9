"""The process `kvfleet up` leaves running: Redis (unless given a URL), a local Ray, the Serve
application and the gRPC router, all stopped together on SIGTERM (`kvfleet down`).

It reads the cluster config `kvfleet up` validated from ``cluster.json``, and writes
``state.json`` into its run directory once the router serves, or ``error.txt`` if
start-up failed, which is how `kvfleet up` learns the outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import traceback
from pathlib import Path

import ray
from ray import serve

from cluster import cluster_config, http_options, ray_cluster
from cluster.app import deploy
from cluster.cluster_config import ClusterConfig, RedisSettings
from cluster.front_door import start_front_door
from cluster.redis_server import RedisServer
from cluster.run_state import CONFIG_FILE, ERROR_FILE, STAGE_FILE, STATE_FILE, RunState, write_stage


async def _serve(config: ClusterConfig, run_dir: Path) -> None:
    write_stage(run_dir, "starting Ray" if config.ray.address is None else "joining Ray")
    if config.ray.address is None:
        ray.init(num_cpus=config.ray.num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray_cluster.join(config.ray.address)
    try:
        write_stage(run_dir, f"starting {config.pool.replicas} replicas (loading the model)")
        deploy(config)
        write_stage(run_dir, "opening the front doors")
        http, host = http_options.from_config(config.router), config.router.host
        router = await start_front_door(
            config.app_name, host, config.router.grpc_port, config.router.max_queued_requests, http
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        RunState(
            pid=os.getpid(),
            target=f"{host}:{config.router.grpc_port}",
            http_target=f"{host}:{http.port}" if http.port else "",
            ray_address=ray.get_runtime_context().gcs_address,
            redis_url=config.redis.url or "",
            app_name=config.app_name,
        ).write(run_dir)
        await stopping.wait()
        await router.stop()
    finally:
        serve.shutdown()
        ray.shutdown()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum} while starting")  # unwinds the finally blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help=f"where `kvfleet up` wrote {CONFIG_FILE}")
    run_dir: Path = parser.parse_args().run_dir
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    redis = None
    try:
        config = cluster_config.load(json.loads((run_dir / CONFIG_FILE).read_text()))
        if config.redis.url is None:
            write_stage(run_dir, "starting Redis")
            redis = RedisServer()
            redis.start()
            config = config.model_copy(update={"redis": RedisSettings(url=redis.url)})
        asyncio.run(_serve(config, run_dir))
    except BaseException:
        (run_dir / ERROR_FILE).write_text(traceback.format_exc())
        raise
    finally:
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        (run_dir / STAGE_FILE).unlink(missing_ok=True)
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
