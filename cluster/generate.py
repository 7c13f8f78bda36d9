"""`kvfleet generate`: run one prompt through a local engine and stream the text."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from worker.async_engine import AsyncEngine
from worker.config import EngineConfig
from worker.engine import Engine
from worker.sampling_params import SamplingParams


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--model", required=True, help="a Hugging Face model directory")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")


async def _stream(args: argparse.Namespace) -> int:
    engine = AsyncEngine(Engine(EngineConfig(model=Path(args.model), dtype=args.dtype)))
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=tuple(args.stop),
        ignore_eos=args.ignore_eos,
    )
    try:
        echoed = False
        async for output in engine.generate(args.prompt, params):
            if not echoed:  # only once the request was accepted
                sys.stdout.write(args.prompt)
                echoed = True
            sys.stdout.write(output.text)
            sys.stdout.flush()
            if output.finished:
                print(
                    f"\n[{output.finish_reason}: {output.num_prompt_tokens} prompt tokens, "
                    f"{output.num_output_tokens} generated, "
                    f"first token after {1000 * (output.time_to_first_token_s or 0):.0f} ms]",
                    file=sys.stderr,
                )
    finally:
        engine.shutdown()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_stream(args))
