"""Routing policies under cache pressure, closed-loop, in virtual time (bench/routing_sim.py).

Every system routes the same sessions through the same simulated fleet: 4 replicas built on the
engine's own scheduler and prefix cache, 32 clients each sending its next request when the
previous answer is complete. Workloads (bench/routing_workloads.py):
  shared_prefix  SGLang's generated-shared-prefix shape: 64 groups x 16 prompts, a 1,500-token
                 system prompt and a ~100-token question each, shuffled;
  zipf_prefix    the same prompts, each request's group drawn with Zipf(1.1) popularity;
  multi_turn     128 conversations of 6 turns, each prompt the whole conversation so far;
  no_sharing     1,024 unique 1,600-token prompts: the load-balance control.
Each replica's KV cache holds a quarter of the groups' prefixes plus room for its share of the
requests in flight, so the groups fit in the cluster only if each stays on one replica. Every
workload runs at two speeds: prefill-bound (4,000 prefill tokens/s, 32 output tokens) and
decode-bound (40,000 prefill tokens/s, 128 output tokens), 15 ms a step.

Systems: kvfleet (router.PrefixAwarePolicy), kvfleet_4 (four routers taking turns, fed the
same events), round_robin, least_loaded, sglang (bench/sglang_cache_aware.py, the SGLang
router's cache_aware rule written from its documentation) and oracle (reads the replicas' real
caches at decision time); ``ceiling`` is the oracle on 100x larger caches: the hit rate no
routing reaches with these prompts at this concurrency. Figures: prefix hit rate (cached prompt
tokens at admission over prompt tokens), load max/mean (requests per replica), time to first
token p50/p99, and requests/s over the run.

The last line is one JSON object: every figure as SYSTEM.WORKLOAD.SPEED.FIGURE, then the
summaries min_hit_over_reference, min_hit_over_oracle, min_hit_over_rr (shared-prefix
workloads), max_load_max_over_mean, min_rps_over_reference, max_ttft_p99_over_reference,
min_hit_4_routers_over_1, min_hit_over_ceiling and min_reference_hit_over_ceiling,
decision_p50_us and decision_p99_us (choose() on 4,096-token prompts over 16 replicas, hashing
included), index_bytes_per_block, and targets_failed. --quick keeps the cache pressure and every
system with a quarter of the requests. --e2e: bench/routing_e2e.py (real replicas over gRPC).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.routing_e2e import e2e
from bench.routing_policies import Kvfleet, LeastLoaded, Oracle, RoundRobin
from bench.routing_sim import (
    BLOCK,
    DECODE_BOUND,
    PREFILL_BOUND,
    FleetShape,
    Policy,
    SimReplica,
    Speed,
    simulate,
)
from bench.routing_workloads import (
    VOCAB,
    Workload,
    conversations,
    generated_shared_prefix,
    unique_prompts,
    zipf_shared_prefix,
)
from bench.sglang_cache_aware import SGLangCacheAware
from router import PrefixAwarePolicy, PrefixIndex, RouterConfig
from worker.block_hash import extend_block_hashes
from worker.kv_cache_manager import KVCacheManager
from worker.kv_events import BlockStored
from worker.load_report import LoadReport
from worker.request import Request
from worker.sampling_params import SamplingParams

REPLICAS, CLIENTS, PREFIX, QUESTION = 4, 32, 1500, 100


@dataclass(frozen=True)
class Scale:
    groups: int
    per_group: int
    conversations: int
    decisions: int  # timed choose() calls
    held_prompts: int  # 4,096-token prompts cached per replica for the timing
    memory_cap: int  # index bytes for the bytes-per-block measurement


FULL = Scale(groups=64, per_group=16, conversations=128, decisions=3000, held_prompts=32,
             memory_cap=4 << 20)  # fmt: skip
QUICK = Scale(groups=32, per_group=8, conversations=48, decisions=600, held_prompts=8,
              memory_cap=1 << 20)  # fmt: skip

SYSTEMS: dict[str, Callable[[list[SimReplica]], Policy]] = {
    "kvfleet": lambda fleet: Kvfleet(len(fleet)),
    "kvfleet_4": lambda fleet: Kvfleet(len(fleet), routers=4, seed=10),
    "sglang": lambda fleet: SGLangCacheAware(len(fleet)),
    "round_robin": lambda fleet: RoundRobin(len(fleet)),
    "least_loaded": lambda fleet: LeastLoaded(len(fleet)),
    "oracle": Oracle,
}
SHARED = ("shared_prefix", "zipf_prefix", "multi_turn")


def tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def workloads(scale: Scale) -> list[Workload]:
    requests = scale.groups * scale.per_group
    return [
        generated_shared_prefix(scale.groups, scale.per_group, PREFIX, QUESTION, seed=1),
        zipf_shared_prefix(scale.groups, requests, PREFIX, QUESTION, seed=2),
        conversations(scale.conversations, 6, first=600, message=QUESTION, think_s=2.0, seed=3),
        unique_prompts(requests, PREFIX + QUESTION, seed=4),
    ]


def fleet_shape(scale: Scale, speed: Speed) -> FleetShape:
    """A quarter of the groups' prefixes per replica, plus twice its share of the requests in
    flight: the groups fit in the cluster only if each stays on one replica."""
    prefix_blocks = math.ceil(PREFIX / BLOCK)
    own = math.ceil((QUESTION * 1.2 + speed.output_tokens) / BLOCK)
    blocks = scale.groups // REPLICAS * prefix_blocks + 2 * (CLIENTS // REPLICAS) * own
    return FleetShape(REPLICAS, blocks, CLIENTS)


def run_table(scale: Scale) -> dict[str, dict[str, float]]:
    """Every system on every workload and speed; plus ``ceiling``: the oracle on caches 100x
    larger, the hit rate no routing can pass with these prompts and this concurrency."""
    table: dict[str, dict[str, float]] = {}
    for speed in (PREFILL_BOUND, DECODE_BOUND):
        shape = fleet_shape(scale, speed)
        unbounded = dataclasses.replace(shape, blocks_per_replica=100 * shape.blocks_per_replica)
        for workload in workloads(scale):
            runs = [(system, make, shape) for system, make in SYSTEMS.items()]
            for system, make, fleet in [*runs, ("ceiling", Oracle, unbounded)]:
                result = simulate(workload, speed, fleet, make)
                key = f"{system}.{workload.name}.{speed.name}"
                table[key] = result.figures()
                row = " ".join(f"{k} {v:.3f}" for k, v in table[key].items())
                print(f"{key:44s} {row} preemptions {result.preemptions}", flush=True)
    return table


def summarize(table: dict[str, dict[str, float]]) -> dict[str, float]:
    cells = {key.split(".", 1)[1] for key in table}
    shared = [c for c in cells if c.split(".")[0] in SHARED]
    prefix_only = [c for c in shared if c.split(".")[0] != "multi_turn"]

    def ratio(system: str, other: str, figure: str, among: list[str]) -> list[float]:
        return [
            table[f"{system}.{c}"][figure] / max(table[f"{other}.{c}"][figure], 1e-9) for c in among
        ]

    return {
        "min_hit_over_reference": min(ratio("kvfleet", "sglang", "hit_rate", shared)),
        "min_hit_over_oracle": min(ratio("kvfleet", "oracle", "hit_rate", shared)),
        "min_hit_over_rr": min(ratio("kvfleet", "round_robin", "hit_rate", prefix_only)),
        "max_load_max_over_mean": max(table[f"kvfleet.{c}"]["load_max_over_mean"] for c in cells),
        "min_rps_over_reference": min(ratio("kvfleet", "sglang", "rps", sorted(cells))),
        "max_ttft_p99_over_reference": max(ratio("kvfleet", "sglang", "ttft_p99_s", sorted(cells))),
        "min_hit_4_routers_over_1": min(ratio("kvfleet_4", "kvfleet", "hit_rate", shared)),
        "min_hit_over_ceiling": min(ratio("kvfleet", "ceiling", "hit_rate", shared)),
        "min_reference_hit_over_ceiling": min(ratio("sglang", "ceiling", "hit_rate", shared)),
    }


def decision_latency(scale: Scale) -> dict[str, float]:
    """choose() on 4,096-token prompts with 16 replicas whose caches the index knows from their
    events: a third fully cached somewhere, a third sharing half, a third unique."""
    rng = random.Random(16)
    router = PrefixAwarePolicy(RouterConfig(seed=0))
    held = []
    for r in range(16):
        router.add_replica(str(r))
        cache = KVCacheManager(scale.held_prompts * 260, BLOCK)
        for i in range(scale.held_prompts):
            prompt = tokens(rng, 4096)
            held.append(prompt)
            request = Request(f"h{r}-{i}", prompt, SamplingParams(), BLOCK)
            assert cache.admit(request, len(prompt)) is not None
            request.num_computed_tokens = len(prompt)
            cache.cache_blocks(request)
            cache.free(request)
        router.on_kv_events(str(r), cache.pool.events.drain(), now=0.0)
        router.on_load_report(str(r), LoadReport(2, rng.randrange(8000), 8, 0.5, 4000, 0, 0), 0.0)
    kinds = [
        lambda: rng.choice(held)[:4080] + tokens(rng, 16),
        lambda: rng.choice(held)[:2048] + tokens(rng, 2048),
        lambda: tokens(rng, 4096),
    ]
    # Kept compact and materialized right before each decision, as a tokenizer hands over a
    # fresh list: 300 prompts of old int objects would measure cache misses, not routing.
    queries = [np.array(kinds[i % 3](), dtype=np.int64) for i in range(300)]
    times: list[list[float]] = [[], [], []]
    for n in range(scale.decisions):
        prompt = queries[n % len(queries)].tolist()
        start = time.perf_counter_ns()
        router.choose(prompt, now=1.0)
        times[n % 3].append((time.perf_counter_ns() - start) / 1000)
    every = sorted(t for kind in times for t in kind)
    records = []
    for n in range(200):  # the predicted write after a decision: not on the decision path
        decision = router.choose(queries[n].tolist(), now=1.0)
        start = time.perf_counter_ns()
        router.record(decision, f"t{n}", now=1.0)
        records.append((time.perf_counter_ns() - start) / 1000)
    return {
        "decision_p50_us": every[len(every) // 2],
        "decision_p99_us": every[int(len(every) * 0.99)],
        "decision_p50_us_cached": statistics.median(times[0]),
        "decision_p50_us_half_cached": statistics.median(times[1]),
        "decision_p50_us_unique": statistics.median(times[2]),
        "record_p50_us": statistics.median(records),
        "decision_index_blocks": router.index.num_blocks(now=1.0),
        "decision_index_bytes_per_block": router.index.memory_bytes()
        / router.index.num_blocks(now=1.0),
    }


def index_bytes_per_block(scale: Scale) -> float:
    """Everything router/ allocates for an index fed events until it evicts at its cap."""
    rng = random.Random(5)
    tracemalloc.start()
    index = PrefixIndex(BLOCK, scale.memory_cap, RouterConfig().predicted_ttl_s)
    for r in range(8):
        index.add_replica(str(r))
    seqs = [0] * 8
    while index.blocks.evicted < index.blocks.table.capacity // 2:
        r = rng.randrange(8)
        prompt = tokens(rng, 64 * BLOCK)
        hashes: list[bytes] = []
        extend_block_hashes(hashes, prompt, BLOCK)
        batch = []
        for b, block_hash in enumerate(hashes):
            parent = hashes[b - 1] if b else None
            batch.append(
                BlockStored(seqs[r], block_hash, parent, tuple(prompt[b * 16 : b * 16 + 16]))
            )
            seqs[r] += 1
        index.apply_events(str(r), batch, now=0.0)
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/router/*")])
    tracemalloc.stop()
    index.check_integrity(now=0.0)
    return sum(stat.size for stat in snapshot.statistics("filename")) / index.num_blocks(now=0.0)


TARGETS: dict[str, Callable[[dict[str, float]], bool]] = {
    "min_hit_over_reference >= 1.05": lambda f: f["min_hit_over_reference"] >= 1.05,
    "min_hit_over_oracle >= 0.95": lambda f: f["min_hit_over_oracle"] >= 0.95,
    "min_hit_over_rr >= 3": lambda f: f["min_hit_over_rr"] >= 3,
    "max_load_max_over_mean <= 1.2": lambda f: f["max_load_max_over_mean"] <= 1.2,
    "min_rps_over_reference >= 1": lambda f: f["min_rps_over_reference"] >= 1,
    "max_ttft_p99_over_reference <= 1": lambda f: f["max_ttft_p99_over_reference"] <= 1,
    "decision_p50_us <= 100": lambda f: f["decision_p50_us"] <= 100,
    "decision_p99_us <= 500": lambda f: f["decision_p99_us"] <= 500,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, well under a minute")
    parser.add_argument(
        "--e2e", action="store_true", help="real CPU replicas through the gRPC front door"
    )
    args = parser.parse_args()
    if args.e2e:
        print(json.dumps(e2e(args.quick)))
        return
    scale = QUICK if args.quick else FULL
    start = time.perf_counter()
    table = run_table(scale)
    summary = summarize(table)
    timing = decision_latency(scale)
    print("decision: " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    summary.update(timing)
    summary["index_bytes_per_block"] = index_bytes_per_block(scale)
    figures: dict[str, object] = {
        f"{key}.{name}": round(value, 4)
        for key, row in table.items()
        for name, value in row.items()
    }
    figures.update({k: round(v, 4) for k, v in summary.items()})
    figures["targets_failed"] = [name for name, ok in TARGETS.items() if not ok(summary)]
    figures["elapsed_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
