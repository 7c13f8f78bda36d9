"""`kvfleet router`: one more gRPC router for a running fleet, in the foreground. Each router
keeps its own index, fed by the replicas' KV events through Redis."""

from __future__ import annotations

import argparse
import asyncio
import signal

import ray

from cluster import http_options, ray_cluster
from cluster.front_door import start_front_door


async def _serve(args: argparse.Namespace, http: http_options.HTTPOptions) -> None:
    router = await start_front_door(args.app_name, args.host, args.port, http=http)
    print(f"kvfleet router: serving {args.app_name!r}, {router.doors.describe()}", flush=True)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await router.stop()


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    http = http_options.from_args(args)
    ray_cluster.join(args.ray_address)
    try:
        asyncio.run(_serve(args, http))
    finally:
        ray.shutdown()
    return 0
