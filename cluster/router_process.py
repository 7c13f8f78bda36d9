"""`kvfleet router`: one more gRPC router for a running fleet, in the foreground. Each router
keeps its own index, fed by the replicas' KV events through Redis."""

from __future__ import annotations

import asyncio
import signal

import ray

from cluster import ray_cluster
from cluster.front_door import start_front_door
from cluster.http_options import DoorOptions


async def _serve(app_name: str, doors: DoorOptions) -> None:
    router = await start_front_door(
        app_name, doors.host, doors.port, http=doors.http, tls=doors.tls, auth=doors.auth
    )
    print(f"kvfleet router: serving {app_name!r}, {router.doors.describe()}", flush=True)
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await router.stop()


def run(ray_address: str, app_name: str, doors: DoorOptions) -> None:
    """Serve until SIGTERM or SIGINT; ValueError or FleetError says what is wrong."""
    ray_cluster.join(ray_address)
    try:
        asyncio.run(_serve(app_name, doors))
    finally:
        ray.shutdown()
