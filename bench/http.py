"""The same closed-loop load through the gRPC front door and through the OpenAI HTTP one.

`kvfleet serve` runs the demo model in its own process with both front doors on one engine.
C clients each send their next request when the previous stream ends: a fresh random prompt
of P token ids (so no request hits another's cache), M output tokens, greedy, streamed. gRPC
clients call Generate; HTTP clients POST /v1/completions with "stream": true and read the
server-sent events the way OpenAI-compatible load generators do (aiohttp, line by line). Rounds
alternate gRPC, HTTP, gRPC, ... with the same load; each round gives time to first token p50
and p99 (at the client: from sending to the first token's bytes) and output tokens/s over the
round; the figures are medians over rounds. The last line is one JSON object with both front
doors' figures, the ratios http_over_grpc_ttft_p50 and http_over_grpc_tokens_per_s, and
targets_failed (target: TTFT p50 within 1.15x of gRPC's, throughput at least 0.9x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc

from cluster.demo_model import write_demo_model
from protos.kvfleet.v1 import generation_pb2 as pb
from protos.kvfleet.v1 import generation_pb2_grpc as pb_grpc
from tests.net import free_port


@dataclass(frozen=True)
class Scale:
    preset: str
    clients: int
    prompt_tokens: int
    max_tokens: int
    requests: int  # per round
    rounds: int  # per front door


FULL = Scale("tiny", clients=16, prompt_tokens=256, max_tokens=64, requests=64, rounds=5)
QUICK = Scale("tiny", clients=8, prompt_tokens=128, max_tokens=32, requests=32, rounds=3)
VOCAB_LOW = 10  # clear of the special tokens


@dataclass
class Round:
    ttfts: list[float]
    tokens: int
    seconds: float

    def figures(self) -> dict[str, float]:
        ttfts = sorted(self.ttfts)
        return {
            "ttft_p50_ms": 1000 * ttfts[len(ttfts) // 2],
            "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))],
            "tokens_per_s": self.tokens / self.seconds,
        }


Call = Callable[[list[int]], Awaitable[tuple[float, int]]]  # prompt -> (ttft, output tokens)


async def closed_loop(call: Call, prompts: list[list[int]], clients: int) -> Round:
    queue = list(reversed(prompts))
    ttfts: list[float] = []
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while queue:
            ttft, n = await call(queue.pop())
            ttfts.append(ttft)
            tokens += n

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Round(ttfts, tokens, time.perf_counter() - start)


def grpc_call(stub: pb_grpc.GenerationStub, max_tokens: int) -> Call:
    sampling = pb.SamplingParameters(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def call(prompt: list[int]) -> tuple[float, int]:
        request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=prompt), sampling=sampling)
        start, first, n = time.perf_counter(), 0.0, 0
        async for response in stub.Generate(request):
            if response.token_ids and not n:
                first = time.perf_counter() - start
            n += len(response.token_ids)
        return first, n

    return call


def http_call(session: aiohttp.ClientSession, url: str, max_tokens: int) -> Call:
    async def call(prompt: list[int]) -> tuple[float, int]:
        body = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start, first, n = time.perf_counter(), 0.0, 0
        async with session.post(url, json=body) as response:
            response.raise_for_status()
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["text"] and not first:
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    n = chunk["usage"]["completion_tokens"]
        return first, n

    return call


async def run(scale: Scale, vocab: int, grpc_port: int, http_port: int) -> dict[str, object]:
    rng = random.Random(0)

    def prompts() -> list[list[int]]:
        return [
            [rng.randrange(VOCAB_LOW, vocab) for _ in range(scale.prompt_tokens)]
            for _ in range(scale.requests)
        ]

    rounds: dict[str, list[dict[str, float]]] = {"grpc": [], "http": []}
    connector = aiohttp.TCPConnector(limit=scale.clients)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        calls = {
            "grpc": grpc_call(pb_grpc.GenerationStub(channel), scale.max_tokens),
            "http": http_call(
                session, f"http://127.0.0.1:{http_port}/v1/completions", scale.max_tokens
            ),
        }
        for call in calls.values():  # warm-up, not counted
            await closed_loop(call, prompts()[: scale.clients], scale.clients)
        for _ in range(scale.rounds):
            for name, call in calls.items():
                result = await closed_loop(call, prompts(), scale.clients)
                rounds[name].append(result.figures())
                print(f"{name:5s} " + " ".join(
                    f"{k} {v:.1f}" for k, v in rounds[name][-1].items()), flush=True)  # fmt: skip
    medians = {
        f"{name}.{key}": round(statistics.median(r[key] for r in per_round), 2)
        for name, per_round in rounds.items()
        for key in per_round[0]
    }
    ttft = medians["http.ttft_p50_ms"] / medians["grpc.ttft_p50_ms"]
    rate = medians["http.tokens_per_s"] / medians["grpc.tokens_per_s"]
    figures: dict[str, object] = dict(medians)
    figures["http_over_grpc_ttft_p50"] = round(ttft, 3)
    figures["http_over_grpc_tokens_per_s"] = round(rate, 3)
    failed = []
    if ttft > 1.15:
        failed.append("http_over_grpc_ttft_p50 <= 1.15")
    if rate < 0.9:
        failed.append("http_over_grpc_tokens_per_s >= 0.9")
    figures["targets_failed"] = failed
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    grpc_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / f"demo-{scale.preset}"
        write_demo_model(model, preset=scale.preset, seed=0)
        server = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "serve", "--model", str(model),
             "--port", str(grpc_port), "--http-port", str(http_port)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            print(server.stdout.readline().strip(), flush=True)
            start = time.perf_counter()
            vocab = json.loads((model / "config.json").read_text())["vocab_size"]
            figures = asyncio.run(run(scale, vocab, grpc_port, http_port))
            figures["elapsed_s"] = round(time.perf_counter() - start, 1)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
