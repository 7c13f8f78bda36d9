"""The serving half of bench.kv_transfer: disaggregated against colocated serving of the demo
model, through the gRPC front door, under long-prompt interference.

Three applications on one local Ray cluster, two engine processes each (one torch thread):
  colocated      two replicas that prefill and decode, behind kvfleet's router;
  disaggregated  one prefill and one decode replica, kvfleet's conditional rule (prompts with
                 at most local_prefill_tokens uncached on the decode pool are prefilled there);
  always_remote  the same pools with every prompt prefilled by the prefill pool: the rule of
                 vLLM's disaggregated-prefill proxy (each request goes to the prefill instance
                 with max_tokens=1, then to the decode instance).
Closed loop: each client sends its next request when the last one ends; a quarter of the
prompts are long (1,024 tokens), the rest short (32 tokens), all unique, 64 output tokens,
ignore_eos. Figures per round: p99 of the gaps between streamed tokens (the long prompts'
prefill is what stalls a colocated replica's decodes) and output tokens per second.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import app, cluster_config
from cluster.cluster_config import ClusterConfig
from cluster.front_door import FrontDoorThread
from router.load_generator import ClosedLoop

SYSTEMS = ("colocated", "disaggregated", "always_remote")
LONG_LEN, SHORT_LEN, LONG_FRACTION = 1024, 32, 0.25
OUTPUT_LEN = 64
LOCAL_PREFILL_TOKENS = 256
ENGINE = {"kv_cache_mb": 64, "max_num_seqs": 32}


@dataclass(frozen=True)
class Round:
    itl_p99_ms: float
    output_tokens_per_s: float
    requests: int
    lost: int  # failed, or fewer tokens than asked


def config(system: str, model: Path, redis_url: str) -> ClusterConfig:
    data: dict[str, Any] = {"model": str(model), "app_name": f"bench-pd-{system}"}
    if system == "colocated":
        data["pools"] = {"colocated": {"replicas": 2, "engine": ENGINE}}
    else:
        data["pools"] = {
            "prefill": {"replicas": 1, "engine": ENGINE},
            "decode": {"replicas": 1, "engine": ENGINE},
        }
        threshold = LOCAL_PREFILL_TOKENS if system == "disaggregated" else 0
        data["disaggregation"] = {"local_prefill_tokens": threshold}
    return cluster_config.load({**data, "redis": {"url": redis_url}})


def start(system: str, model: Path, redis_url: str, port: int) -> FrontDoorThread:
    app.deploy(config(system, model, redis_url))
    return FrontDoorThread(f"bench-pd-{system}", port=port)


def run_round(target: str, clients: int, seconds: float, vocab_size: int, seed: int) -> Round:
    def prompt(client: int, n: int) -> list[int]:
        rng = random.Random(hash((seed, client, n)))
        length = LONG_LEN if rng.random() < LONG_FRACTION else SHORT_LEN
        return [rng.randrange(100, vocab_size) for _ in range(length)]

    load = ClosedLoop(target, clients, prompt, OUTPUT_LEN)
    started = time.monotonic()
    time.sleep(seconds)
    results = load.stop()
    elapsed = time.monotonic() - started
    gaps = sorted(gap for r in results for gap in r.itl_s)
    p99 = gaps[int(0.99 * (len(gaps) - 1))] if gaps else float("nan")
    return Round(
        itl_p99_ms=1000 * p99,
        output_tokens_per_s=sum(r.output_tokens for r in results) / elapsed,
        requests=len(results),
        lost=sum(not r.answered for r in results),
    )


def figures(rounds: dict[str, list[Round]]) -> dict[str, Any]:
    """Medians over rounds, and each disaggregated system against colocated."""
    out: dict[str, Any] = {}
    base = rounds["colocated"]
    base_itl = statistics.median(r.itl_p99_ms for r in base)
    base_tput = statistics.median(r.output_tokens_per_s for r in base)
    for system, runs in rounds.items():
        itl = statistics.median(r.itl_p99_ms for r in runs)
        tput = statistics.median(r.output_tokens_per_s for r in runs)
        out[system] = {
            "itl_p99_ms": round(itl, 1),
            "output_tokens_per_s": round(tput, 1),
            "requests": sum(r.requests for r in runs),
            "lost": sum(r.lost for r in runs),
        }
        if system != "colocated":
            out[system]["itl_p99_over_colocated"] = round(itl / base_itl, 3)
            out[system]["throughput_over_colocated"] = round(tput / base_tput, 3)
    return out
