"""bench.routing part (b), --e2e: the demo model on 2 CPU replicas through gRPC, kvfleet's policy
against round-robin.

Shared-prefix workload: G groups x P prompts, each its group's system prompt plus a unique
question (token ids), shuffled, sent by C closed-loop clients through the gRPC router. Each
replica's KV cache holds about KV_GROUPS groups' prefixes, fewer than all G: round-robin sends
every group to both replicas, which then evict each other's prefixes; kvfleet should keep each
group on one replica. Each policy gets fresh replicas (the application is deployed anew) on one
local Ray with one real redis-server. Time to first token is measured at the client: from
sending the call to its first streamed message. Token hit rate: cached over prompt tokens, as
the replicas report them in each call's final message.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import serve

from cluster import cluster_config
from cluster.app import deploy
from cluster.demo_model import write_demo_model
from cluster.front_door import FrontDoorThread
from cluster.redis_server import RedisServer
from router.client import GenerationClient

BLOCK = 16
PORT = 50071


@dataclass(frozen=True)
class E2EScale:
    preset: str  # demo model preset
    groups: int
    per_group: int
    system_tokens: int
    question_tokens: int
    clients: int
    kv_groups: float  # prefixes one replica's KV cache holds, in groups
    max_tokens: int = 4


FULL = E2EScale("small", groups=8, per_group=12, system_tokens=1024, question_tokens=32,
                clients=4, kv_groups=5.0)  # fmt: skip
QUICK = E2EScale("small", groups=6, per_group=6, system_tokens=768, question_tokens=32,
                 clients=4, kv_groups=4.0)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    hit_rate: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    requests_per_s: float
    replica_share: float  # requests on the busiest replica / all


def prompts(scale: E2EScale, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    systems = [_tokens(rng, scale.system_tokens) for _ in range(scale.groups)]
    batch = [
        system + _tokens(rng, scale.question_tokens)
        for system in systems
        for _ in range(scale.per_group)
    ]
    rng.shuffle(batch)
    return batch


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(300, 8000) for _ in range(n)]


def kv_blocks(scale: E2EScale) -> int:
    """``kv_groups`` prefixes, plus what the requests running at once add beyond their prefix
    (blocks in use while a request runs hold prefixes too, so they are not counted twice)."""
    prefix_blocks = scale.system_tokens // BLOCK
    own = -(-(scale.question_tokens + scale.max_tokens) // BLOCK) + 1
    return int(scale.kv_groups * prefix_blocks) + scale.clients * own


def run_policy(policy: str, model: Path, redis_url: str, scale: E2EScale) -> Outcome:
    pool = {"replicas": 2, "engine": {"num_kv_blocks": kv_blocks(scale)}}
    config = cluster_config.load(
        {
            "model": str(model),
            "app_name": f"bench-{policy.replace('_', '-')}",
            "pools": {"colocated": pool},
            "router": {"policy": policy},
            "redis": {"url": redis_url},
        }
    )
    deploy(config)
    router = FrontDoorThread(config.app_name, port=PORT)
    try:
        with GenerationClient(router.target) as client:
            start = time.perf_counter()
            results = _closed_loop(client, prompts(scale), scale)
            elapsed = time.perf_counter() - start
    finally:
        router.stop()
        serve.delete(config.app_name)
    cached = sum(r[1] for r in results)
    total = sum(r[2] for r in results)
    ttfts = sorted(r[0] for r in results)
    replicas = [r[3] for r in results]
    busiest = max(replicas.count(r) for r in set(replicas))
    return Outcome(
        hit_rate=cached / total,
        ttft_p50_ms=1000 * statistics.median(ttfts),
        ttft_p99_ms=1000 * ttfts[int(0.99 * (len(ttfts) - 1))],
        requests_per_s=len(results) / elapsed,
        replica_share=busiest / len(replicas),
    )


def _closed_loop(
    client: GenerationClient, batch: list[list[int]], scale: E2EScale
) -> list[tuple[float, int, int, str]]:
    """(ttft_s, cached, prompt tokens, replica) per request, ``scale.clients`` at a time."""

    def one(prompt: list[int]) -> tuple[float, int, int, str]:
        start = time.perf_counter()
        stream = iter(
            client.generate(prompt, max_tokens=scale.max_tokens, temperature=0.0, ignore_eos=True)
        )
        responses = [next(stream)]
        ttft = time.perf_counter() - start
        responses += stream
        done = responses[-1].finished
        return ttft, done.usage.cached_tokens, done.usage.prompt_tokens, done.replica

    with ThreadPoolExecutor(scale.clients) as pool:
        return list(pool.map(one, batch))


def e2e(quick: bool) -> dict[str, float]:
    """Both policies on fresh replicas; the figures of the e2e part of bench.routing."""
    scale = QUICK if quick else FULL
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    redis = RedisServer()
    redis.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / f"demo-{scale.preset}"
            write_demo_model(model, preset=scale.preset, seed=0)
            serve.start(http_options={"location": "NoServer"})
            outcomes = {
                p: run_policy(p, model, redis.url, scale) for p in ("kvfleet", "round_robin")
            }
    finally:
        serve.shutdown()
        ray.shutdown()
        redis.stop()
    kv, rr = outcomes["kvfleet"], outcomes["round_robin"]
    for name, o in outcomes.items():
        print(
            f"e2e {name}: hit rate {o.hit_rate:.3f}, TTFT p50 {o.ttft_p50_ms:.1f} ms, "
            f"p99 {o.ttft_p99_ms:.1f} ms, {o.requests_per_s:.2f} requests/s, "
            f"busiest replica {o.replica_share:.2f} of requests"
        )
    return {
        "e2e_hit_rate": round(kv.hit_rate, 4),
        "e2e_rr_hit_rate": round(rr.hit_rate, 4),
        "e2e_ttft_p50_ms": round(kv.ttft_p50_ms, 1),
        "e2e_rr_ttft_p50_ms": round(rr.ttft_p50_ms, 1),
        "e2e_ttft_p50_over_rr": round(kv.ttft_p50_ms / rr.ttft_p50_ms, 3),
        "e2e_ttft_p99_ms": round(kv.ttft_p99_ms, 1),
        "e2e_rr_ttft_p99_ms": round(rr.ttft_p99_ms, 1),
        "e2e_requests_per_s": round(kv.requests_per_s, 3),
        "e2e_rr_requests_per_s": round(rr.requests_per_s, 3),
        "e2e_busiest_replica_share": round(kv.replica_share, 3),
    }
