"""`kvfleet serve`: one model served in this process on the gRPC API and the OpenAI HTTP API, in
the foreground, without Ray or Redis: the smallest deployment, and the front doors' test bed."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from cluster.http_options import DoorOptions
from cluster.local_backend import LocalBackend
from router.front_doors import open_front_doors
from worker.async_engine import AsyncEngine
from worker.config import EngineConfig


def run(model: Path, name: str, max_queued_requests: int, doors: DoorOptions) -> None:
    """Serve until SIGTERM or SIGINT; ValueError names a bad option."""
    if max_queued_requests < 1:
        raise ValueError(f"--max-queued-requests must be at least 1, got {max_queued_requests}")
    asyncio.run(_serve(model, name or model.name, max_queued_requests, doors))


async def _serve(model: Path, name: str, max_queued_requests: int, options: DoorOptions) -> None:
    http = options.http
    template = http.chat_template_for(model) if http.port else None
    # The engine core in a process of its own: the front doors' Python work runs beside the
    # steps instead of taking turns with them on one interpreter lock.
    engine = await asyncio.to_thread(AsyncEngine.spawn, EngineConfig(model=model))
    backend = LocalBackend(engine, name, max_queued_requests)
    try:
        doors = await open_front_doors(
            backend, options.host, options.port, http.http_port, template, http.config,
            options.tls, options.auth,
        )  # fmt: skip
        try:
            print(f"kvfleet serve: {backend.model_name}, {doors.describe()}", flush=True)
            stopping = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
            await stopping.wait()
        finally:
            await doors.stop()
    finally:
        engine.shutdown()
