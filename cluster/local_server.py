"""`kvfleet serve`: one model served in this process on the gRPC API and the OpenAI HTTP API, in
the foreground, without Ray or Redis: the smallest deployment, and the front doors' test bed."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from cluster import http_options
from cluster.local_backend import LocalBackend
from router.front_doors import open_front_doors
from worker.async_engine import AsyncEngine
from worker.config import EngineConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--name", default="", help="served model name (default: directory name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--max-queued-requests", type=int, default=1024)
    http_options.add_arguments(parser, default_port=8000)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    if args.max_queued_requests < 1:
        raise ValueError(
            f"--max-queued-requests must be at least 1, got {args.max_queued_requests}"
        )
    http = http_options.from_args(args)
    asyncio.run(_serve(args, http))
    return 0


async def _serve(args: argparse.Namespace, http: http_options.HTTPOptions) -> None:
    template = http.chat_template_for(args.model) if http.port else None
    # The engine core in a process of its own: the front doors' Python work runs beside the
    # steps instead of taking turns with them on one interpreter lock.
    engine = await asyncio.to_thread(AsyncEngine.spawn, EngineConfig(model=args.model))
    backend = LocalBackend(engine, args.name or args.model.name, args.max_queued_requests)
    try:
        doors = await open_front_doors(
            backend, args.host, args.port, http.http_port, template, http.config
        )
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
