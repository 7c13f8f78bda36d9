"""`kvfleet router`: one more gRPC router for a running fleet, in the foreground. Each router
keeps its own index, fed by the replicas' KV events through Redis."""

from __future__ import annotations

import asyncio
import signal

import ray

from cluster import ray_cluster
from cluster.front_door import start_front_door
from cluster.http_options import HTTPOptions
from router.auth import TokenAuth
from router.tls import TLSConfig


async def _serve(
    app_name: str,
    host: str,
    port: int,
    http: HTTPOptions,
    tls: TLSConfig | None,
    auth: TokenAuth | None,
) -> None:
    router = await start_front_door(app_name, host, port, http=http, tls=tls, auth=auth)
    print(f"kvfleet router: serving {app_name!r}, {router.doors.describe()}", flush=True)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await router.stop()


def run(
    ray_address: str,
    app_name: str,
    host: str,
    port: int,
    http: HTTPOptions,
    tls: TLSConfig | None = None,
    auth: TokenAuth | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; ValueError or FleetError says what is wrong."""
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    ray_cluster.join(ray_address)
    try:
        asyncio.run(_serve(app_name, host, port, http, tls, auth))
    finally:
        ray.shutdown()
