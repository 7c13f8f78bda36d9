"""`kvfleet generate`: stream one completion from a running router (`kvfleet up`)."""

from __future__ import annotations

import argparse
import sys

import grpc

from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerationClient, Sampling

_REASONS = {
    value: name.removeprefix("FINISH_REASON_").lower() for name, value in pb.FinishReason.items()
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--target", default="127.0.0.1:50051", help="the router's host:port")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--cache-salt", default="")
    parser.add_argument("--timeout", type=float, default=120.0, help="the call's deadline, s")


def _sampling(args: argparse.Namespace) -> Sampling:
    sampling = Sampling(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        stop=list(args.stop),
        ignore_eos=args.ignore_eos,
    )
    if args.top_p is not None:
        sampling["top_p"] = args.top_p
    if args.top_k is not None:
        sampling["top_k"] = args.top_k
    if args.seed is not None:
        sampling["seed"] = args.seed
    return sampling


def run(args: argparse.Namespace) -> int:
    with GenerationClient(args.target) as client:
        stream = client.generate(
            args.prompt, cache_salt=args.cache_salt, timeout=args.timeout, **_sampling(args)
        )
        try:
            echoed = False
            for response in stream:
                if not echoed:  # only once the request was accepted
                    sys.stdout.write(args.prompt)
                    echoed = True
                sys.stdout.write(response.text)
                sys.stdout.flush()
                if response.HasField("finished"):
                    _summary(response.finished)
        except grpc.RpcError as exc:
            print(f"\nkvfleet generate: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def _summary(done: pb.Finished) -> None:
    usage, timings = done.usage, done.timings
    print(
        f"\n[{_REASONS[done.reason]} on replica {done.replica}: {usage.prompt_tokens} prompt "
        f"tokens ({usage.cached_tokens} cached), {usage.completion_tokens} generated, first "
        f"token after {1000 * timings.time_to_first_token_s:.0f} ms]",
        file=sys.stderr,
    )
