"""Does serving slow decode? The same requests offline and through the gRPC front door.

Offline: the engine in this process, driven closed-loop with C requests in flight (a finished
one is replaced by the next at once). Served: `kvfleet serve` in its own process (one engine,
the gRPC front door), C gRPC streams closed-loop. Both at one torch thread, the same engine
settings, the same prompts: random ones (P token ids each, so none hits another's cache) and
shared-prefix ones (groups sharing a long prefix, then a short unique tail). Offline and served
rounds alternate; each round gives output tokens/s, time to first token p50/p99 and time per
output token p50/p99 (per request: from its first token to its last, over the tokens between);
figures are medians over rounds. ``serving_over_offline_tpot`` is the served TPOT p50 over the
offline one at the same concurrency and workload (target: at most 1.15).

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from cluster.demo_model import write_demo_model
from protos.kvfleet.v1 import generation_pb2 as pb
from protos.kvfleet.v1 import generation_pb2_grpc as pb_grpc
from tests.net import free_port
from worker.config import EngineConfig
from worker.engine import Engine
from worker.sampling_params import SamplingParams

VOCAB_LOW = 10  # clear of the special tokens
TARGET = 1.15


@dataclass(frozen=True)
class Scale:
    concurrencies: tuple[int, ...]
    requests_per_stream: int  # each round sends concurrency x this many requests
    output_tokens: int
    prompt_tokens: int  # random workload
    prefix_tokens: int  # shared-prefix workload: prefix + a unique tail of tail_tokens
    tail_tokens: int
    prefix_groups: int
    rounds: int


FULL = Scale((16, 64), 3, 128, 256, 1024, 64, 4, 3)
QUICK = Scale((16, 64), 1, 32, 128, 512, 32, 4, 1)


@dataclass
class Trace:
    """One request's timeline: when it was sent, and when each of its tokens arrived."""

    sent: float
    arrivals: list[float]


def figures(traces: list[Trace], seconds: float) -> dict[str, float]:
    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    ttft = [t.arrivals[0] - t.sent for t in traces]
    tpot = [
        (t.arrivals[-1] - t.arrivals[0]) / (len(t.arrivals) - 1)
        for t in traces
        if len(t.arrivals) > 1
    ]
    return {
        "tokens_per_s": sum(len(t.arrivals) for t in traces) / seconds,
        "ttft_p50_ms": 1000 * pct(ttft, 0.5),
        "ttft_p99_ms": 1000 * pct(ttft, 0.99),
        "tpot_p50_ms": 1000 * pct(tpot, 0.5),
        "tpot_p99_ms": 1000 * pct(tpot, 0.99),
    }


def make_workloads(scale: Scale, vocab: int, requests: int) -> dict[str, list[list[int]]]:
    rng = random.Random(requests)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(VOCAB_LOW, vocab) for _ in range(n)]

    prefixes = [tokens(scale.prefix_tokens) for _ in range(scale.prefix_groups)]
    return {
        "random": [tokens(scale.prompt_tokens) for _ in range(requests)],
        "shared_prefix": [
            prefixes[i % scale.prefix_groups] + tokens(scale.tail_tokens) for i in range(requests)
        ],
    }


def run_offline(engine: Engine, prompts: list[list[int]], clients: int, output: int) -> dict:
    params = SamplingParams(max_tokens=output, temperature=0.0, ignore_eos=True)
    pending = list(reversed(prompts))
    traces: dict[str, Trace] = {}
    done: list[Trace] = []

    def submit() -> None:
        request_id = f"r{len(traces)}"
        request = engine.make_request(request_id, pending.pop(), params)
        traces[request_id] = Trace(time.perf_counter(), [])
        engine.add_request(request)

    start = time.perf_counter()
    for _ in range(min(clients, len(pending))):
        submit()
    while engine.has_unfinished():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            trace = traces[out.request_id]
            trace.arrivals += [now] * len(out.token_ids)
            if out.finished:
                done.append(trace)
                if pending:
                    submit()
    return figures(done, time.perf_counter() - start)


async def run_served(
    stub: pb_grpc.GenerationStub, prompts: list[list[int]], clients: int, output: int
) -> dict:
    sampling = pb.SamplingParameters(max_tokens=output, temperature=0.0, ignore_eos=True)
    pending = list(reversed(prompts))
    done: list[Trace] = []

    async def client() -> None:
        while pending:
            request = pb.GenerateRequest(
                token_ids=pb.TokenIds(ids=pending.pop()), sampling=sampling
            )
            trace = Trace(time.perf_counter(), [])
            async for response in stub.Generate(request):
                now = time.perf_counter()
                trace.arrivals += [now] * len(response.token_ids)
            done.append(trace)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return figures(done, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    port = free_port()
    rounds: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "demo-tiny"
        write_demo_model(model, preset="tiny", seed=0)
        vocab = json.loads((model / "config.json").read_text())["vocab_size"]
        server = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "serve", "--model", str(model),
             "--port", str(port), "--http-port", "0"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        try:
            assert server.stdout is not None
            print(server.stdout.readline().strip(), flush=True)
            start = time.perf_counter()
            asyncio.run(_rounds(scale, vocab, model, port, rounds))
            elapsed = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
    medians = {
        f"{name}.{key}": round(statistics.median(r[key] for r in per_round), 2)
        for name, per_round in rounds.items()
        for key in per_round[0]
    }
    result: dict[str, object] = dict(medians)
    failed = []
    for c in scale.concurrencies:
        for workload in ("random", "shared_prefix"):
            key = f"{workload}.c{c}"
            ratio = medians[f"served.{key}.tpot_p50_ms"] / medians[f"offline.{key}.tpot_p50_ms"]
            result[f"serving_over_offline_tpot.{key}"] = round(ratio, 3)
            if ratio > TARGET:
                failed.append(f"serving_over_offline_tpot.{key} <= {TARGET}")
    result["targets_failed"] = failed
    result["elapsed_s"] = round(elapsed, 1)
    print(json.dumps(result))


async def _rounds(
    scale: Scale, vocab: int, model: Path, port: int, rounds: dict[str, list[dict[str, float]]]
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GenerationStub(channel)
        warm = make_workloads(scale, vocab, 4)["random"]
        await run_served(stub, warm, 4, 4)
        for r in range(scale.rounds):
            for c in scale.concurrencies:
                workloads = make_workloads(scale, vocab, c * scale.requests_per_stream + r)
                for workload, prompts in workloads.items():
                    key = f"{workload}.c{c}"
                    # A fresh engine per offline run, as the server's cache holds nothing of
                    # these prompts either (each round's prompts are new).
                    engine = Engine(EngineConfig(model=model))
                    offline = run_offline(engine, prompts, c, scale.output_tokens)
                    del engine
                    served = await run_served(stub, prompts, c, scale.output_tokens)
                    rounds.setdefault(f"offline.{key}", []).append(offline)
                    rounds.setdefault(f"served.{key}", []).append(served)
                    print(
                        f"{key}: offline tpot {offline['tpot_p50_ms']:.1f} ms "
                        f"{offline['tokens_per_s']:.0f} tok/s | served tpot "
                        f"{served['tpot_p50_ms']:.1f} ms {served['tokens_per_s']:.0f} tok/s",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
