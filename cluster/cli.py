"""The `kvfleet` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from worker.errors import KVFleetError

# A local Ray cluster (`kvfleet up`) turns token authentication on by default, and a process
# joining it (`kvfleet router`, `kvfleet status`) sends the token only in this mode, which Ray
# reads once, when it is first imported: so the commands are imported after it is set.
RAY_AUTH_MODE = ("RAY_AUTH_MODE", "token")


def _demo_model(args: argparse.Namespace) -> int:
    from cluster.demo_model import write_demo_model

    write_demo_model(Path(args.dir), preset=args.preset, seed=args.seed)
    print(f"wrote the {args.preset} demo model to {args.dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    os.environ.setdefault(*RAY_AUTH_MODE)
    from cluster import (
        fleet_status,
        generate,
        http_options,
        local_server,
        router_process,
        up,
    )
    from cluster.demo_model import PRESETS

    parser = argparse.ArgumentParser(prog="kvfleet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo-model", help="write a random-weight Llama checkpoint with a locally trained tokenizer"
    )
    demo.add_argument("dir", help="output directory (created if missing)")
    demo.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo_model)

    start = commands.add_parser(
        "up", help="start Redis, a local Ray, N replicas and the gRPC router in the background"
    )
    up.add_arguments(start)
    start.set_defaults(run=up.up)

    stop = commands.add_parser("down", help="stop what `kvfleet up` started")
    stop.add_argument("--run-dir", type=Path, default=Path(".kvfleet/run"))
    stop.set_defaults(run=up.down)

    single = commands.add_parser(
        "serve", help="serve one model in this process, gRPC and HTTP (foreground, no Ray)"
    )
    local_server.add_arguments(single)
    single.set_defaults(run=local_server.run)

    status = commands.add_parser(
        "status", help="each replica of the running fleet: KV blocks, requests, integrity"
    )
    fleet_status.add_arguments(status)
    status.set_defaults(run=fleet_status.run)

    gen = commands.add_parser("generate", help="stream one completion from a running router")
    generate.add_arguments(gen)
    gen.set_defaults(run=generate.run)

    attach = commands.add_parser(
        "router", help="run one more gRPC router for a running fleet (foreground)"
    )
    attach.add_argument("--ray-address", required=True, help="the fleet's Ray GCS address")
    attach.add_argument("--app-name", default="kvfleet")
    attach.add_argument("--host", default="127.0.0.1")
    attach.add_argument("--port", type=int, default=50052)
    http_options.add_arguments(attach, default_port=8001)
    attach.set_defaults(run=router_process.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except (KVFleetError, ValueError, OSError) as exc:  # a bad option, model or port
        parser.exit(2, f"kvfleet {args.command}: error: {exc}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
