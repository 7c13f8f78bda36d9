"""The `kvfleet` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster import generate
from cluster.demo_model import PRESETS, write_demo_model
from worker.errors import KVFleetError


def _demo_model(args: argparse.Namespace) -> int:
    write_demo_model(Path(args.dir), preset=args.preset, seed=args.seed)
    print(f"wrote the {args.preset} demo model to {args.dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvfleet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo-model", help="write a random-weight Llama checkpoint with a locally trained tokenizer"
    )
    demo.add_argument("dir", help="output directory (created if missing)")
    demo.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo_model)

    gen = commands.add_parser("generate", help="stream one completion from a local engine")
    generate.add_arguments(gen)
    gen.set_defaults(run=generate.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except (KVFleetError, ValueError) as exc:
        parser.exit(2, f"kvfleet {args.command}: error: {exc}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
