"""The process `kvfleet up` leaves running, in a session of its own: Redis (unless given a
URL), a local Ray (unless given an address), the Serve application, and the router as a child
process that it restarts when it dies (the replicas are untouched). On SIGTERM (`kvfleet down`)
it stops the router, drains the replicas, and stops Ray and Redis.

It reads the cluster config `kvfleet up` validated from ``cluster.json``, says what it is doing
in ``stage.txt``, and writes ``state.json`` once the router serves, or ``error.txt`` if
start-up failed, which is how `kvfleet up` learns the outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import time
import traceback
from pathlib import Path

import ray
from ray import serve

from cluster import cluster_config, ray_cluster
from cluster.app import deploy
from cluster.cluster_config import ClusterConfig, RedisSettings
from cluster.redis_server import RedisServer
from cluster.router_child import RouterChild
from cluster.run_state import (
    CONFIG_FILE,
    ERROR_FILE,
    ROUTER_LOG_FILE,
    STAGE_FILE,
    STATE_FILE,
    FleetError,
    RunState,
    write_stage,
)

WATCH_PERIOD_S = 0.5
ROUTER_RETRY_S = 5.0


class _Stopping(BaseException):
    """SIGTERM or SIGINT arrived: unwind, stopping what was started (a BaseException, so that
    no `except Exception` on the way swallows it)."""


def _stop(signum: int, frame: object) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second one must not cut the clean-up short
        signal.signal(sig, signal.SIG_IGN)
    raise _Stopping(f"signal {signum}")


def _serve(config: ClusterConfig, run_dir: Path, temp_dir: Path, redis_pid: int) -> None:
    write_stage(run_dir, "starting Ray" if config.ray.address is None else "joining Ray")
    if config.ray.address is None:
        ray.init(
            num_cpus=config.ray.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(temp_dir / "ray"),
        )
    else:
        ray_cluster.join(config.ray.address)
    router = RouterChild(config, ray.get_runtime_context().gcs_address, run_dir / ROUTER_LOG_FILE)
    try:
        pools = ", ".join(f"{n}: {p.describe_scale()}" for n, p in config.pools.active().items())
        write_stage(run_dir, f"starting the replicas ({pools}; loading the model)")
        deploy(config)
        write_stage(run_dir, "starting the router")
        router.start()
        http = config.router.http_port
        state = RunState(
            pid=os.getpid(),
            target=router.target,
            http_target=f"{config.router.host}:{http}" if http else "",
            ray_address=ray.get_runtime_context().gcs_address,
            redis_url=config.redis.url or "",
            app_name=config.app_name,
            redis_pid=redis_pid,
            router_pid=router.pid,
            router_restarts=0,
        )
        state.write(run_dir)
        while True:  # until SIGTERM
            time.sleep(WATCH_PERIOD_S)
            if router.exited():
                print(f"the router (pid {router.pid}) exited; restarting it", flush=True)
                try:
                    router.start()
                except FleetError as exc:  # its port still taken, say: the replicas stay
                    print(f"{exc}; trying again in {ROUTER_RETRY_S:.0f} s", flush=True)
                    time.sleep(ROUTER_RETRY_S)
                    continue
                state = state.with_router(router.pid, router.restarts)
                state.write(run_dir)
    finally:
        router.stop()
        if config.ray.address is None:
            serve.shutdown()  # drains each replica, up to its grace period
        else:  # someone else's cluster: remove our application only (it drains too)
            serve.delete(config.app_name)
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help=f"where `kvfleet up` wrote {CONFIG_FILE}")
    parser.add_argument("temp_dir", type=Path, help="Ray's and Redis's files; removed at exit")
    args = parser.parse_args()
    run_dir, temp_dir = args.run_dir, args.temp_dir
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    redis = None
    try:
        config = cluster_config.load(json.loads((run_dir / CONFIG_FILE).read_text()))
        if config.redis.url is None:
            write_stage(run_dir, "starting Redis")
            redis = RedisServer(parent_dir=temp_dir)
            redis.start()
            config = config.model_copy(update={"redis": RedisSettings(url=redis.url)})
        _serve(config, run_dir, temp_dir, redis.pid if redis is not None else 0)
    except _Stopping:
        pass
    except BaseException:
        (run_dir / ERROR_FILE).write_text(traceback.format_exc())
        raise
    finally:
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        (run_dir / STAGE_FILE).unlink(missing_ok=True)
        if redis is not None:
            redis.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
