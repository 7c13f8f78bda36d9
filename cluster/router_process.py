"""`kvfleet router`: one more gRPC router for a running fleet, in the foreground. Each router
keeps its own index, fed by the replicas' KV events through Redis."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

import ray

from cluster.front_door import start_front_door
from cluster.up import FleetError


async def _serve(args: argparse.Namespace) -> None:
    router = await start_front_door(args.app_name, args.host, args.port)
    print(f"kvfleet router: serving {args.app_name!r} on {args.host}:{args.port}", flush=True)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await router.stop()


def _check_reachable(address: str) -> None:
    """Ray waits minutes for a GCS that is not there; say so at once instead."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address must be HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise FleetError(f"no Ray cluster answers at {address}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    _check_reachable(args.ray_address)
    ray.init(address=args.ray_address, log_to_driver=False)
    try:
        asyncio.run(_serve(args))
    finally:
        ray.shutdown()
    return 0
