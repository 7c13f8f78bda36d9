"""`python -m router.server --model DIR`: serve one model in-process on the gRPC API."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from router.server.app import serve, stop
from router.server.backend import LocalBackend
from worker.async_engine import AsyncEngine
from worker.config import EngineConfig
from worker.engine import Engine


async def _main(args: argparse.Namespace) -> None:
    engine = AsyncEngine(Engine(EngineConfig(model=args.model)))
    backend = LocalBackend(engine, args.name or args.model.name, args.max_queued_requests)
    server = await serve(backend, args.host, args.port)
    print(f"serving {backend.model_name} on {args.host}:{args.port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await stop(server)
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--name", default="", help="served model name (default: directory name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--max-queued-requests", type=int, default=1024)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
