"""Autoscaling on queue depth: a burst of closed-loop clients against a pool that starts with
one replica and may grow to two, then silence.

Three systems, each on fresh replicas, rounds alternated:
  kvfleet        kvfleet's policy (cluster/autoscaling_policy.py): waiting requests and
                 waiting prefill tokens per replica;
  serve_default  the method of the peer this runs on, Ray Serve (and Ray Serve LLM): its own
                 replica_queue_length policy, target_ongoing_requests per replica set to the
                 engine's max_num_seqs (what one replica runs at once); same delays and window;
  fixed          the final replica count (two) from the start: the TTFT an autoscaler costs
                 is measured against it.
Each replica runs the tiny demo model on one torch thread with max_num_seqs 8, so 16 clients
queue on one replica and fit on two. Figures: scale_up_s from the burst's first request until
two replicas run; scale_down_s from the last request's end until one replica is left (the
other drained and stopped); requests_lost (failed, or fewer tokens than asked); TTFT p99 of
the burst (client-side, over gRPC); replica-seconds over the burst (what the pool cost).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig

from cluster import app, cluster_config
from cluster.cluster_config import ClusterConfig
from cluster.demo_model import write_demo_model
from cluster.front_door import FrontDoorThread
from cluster.pool_status import replica_counts
from cluster.redis_server import RedisServer
from router.load_generator import ClosedLoop

PORT = 50081
MAX_NUM_SEQS = 8
CLIENTS = 16
MAX_TOKENS = 64
SYSTEMS = ("kvfleet", "serve_default", "fixed")
UPSCALE_DELAY_S, DOWNSCALE_DELAY_S, LOOK_BACK_S = 1.0, 5.0, 2.0


@dataclass(frozen=True)
class Outcome:
    scale_up_s: float | None  # None: never reached two replicas (fixed: had them from start)
    scale_down_s: float | None
    requests_lost: int
    requests: int
    ttft_p99_ms: float
    replica_seconds: float


def _config(system: str, model: Path, redis_url: str) -> ClusterConfig:
    pool: dict[str, Any] = {
        "replicas": 2 if system == "fixed" else 1,
        "engine": {"max_num_seqs": MAX_NUM_SEQS, "kv_cache_mb": 32},
        "drain_grace_s": 60,
    }
    if system != "fixed":
        pool["autoscaling"] = {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_waiting_per_replica": 2,
            "target_running_per_replica": MAX_NUM_SEQS / 2,
            "metrics_interval_s": 0.5,
            "upscale_delay_s": UPSCALE_DELAY_S,
            "downscale_delay_s": DOWNSCALE_DELAY_S,
            "look_back_period_s": LOOK_BACK_S,
        }
    app_name = f"bench-autoscale-{system.replace('_', '-')}"
    data = {"model": str(model), "app_name": app_name, "pools": {"colocated": pool}}
    return cluster_config.load({**data, "redis": {"url": redis_url}})


def _deploy(system: str, config: ClusterConfig) -> None:
    deployment = app.engine_deployment(config)
    if system == "serve_default":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            serve_policy = AutoscalingConfig(
                min_replicas=1,
                max_replicas=2,
                initial_replicas=1,
                target_ongoing_requests=MAX_NUM_SEQS,
                metrics_interval_s=0.5,
                upscale_delay_s=UPSCALE_DELAY_S,
                downscale_delay_s=DOWNSCALE_DELAY_S,
                look_back_period_s=LOOK_BACK_S,
            )
        deployment = deployment.options(autoscaling_config=serve_policy)
    serve.run(deployment.bind(*app.replica_args(config)), name=config.app_name, route_prefix=None)


def run_system(system: str, model: Path, redis_url: str, burst_s: float) -> Outcome:
    config = _config(system, model, redis_url)
    _deploy(system, config)
    door = FrontDoorThread(config.app_name, port=PORT)
    samples: list[tuple[float, int]] = []  # (time, running replicas)
    try:
        load = ClosedLoop(door.target, CLIENTS, _prompt, MAX_TOKENS)
        start = time.monotonic()
        scaled_up = None
        while time.monotonic() - start < burst_s:
            running = replica_counts(config.app_name).running
            samples.append((time.monotonic(), running))
            if scaled_up is None and running >= 2:
                scaled_up = time.monotonic() - start
            time.sleep(0.25)
        results = load.stop()
        quiet = time.monotonic()
        scaled_down = None
        if system != "fixed":
            while time.monotonic() - quiet < 120:
                if replica_counts(config.app_name).total == 1:
                    scaled_down = time.monotonic() - quiet
                    break
                time.sleep(0.25)
    finally:
        door.stop()
        serve.delete(config.app_name)
    return Outcome(
        scale_up_s=None if system == "fixed" else scaled_up,
        scale_down_s=scaled_down,
        requests_lost=sum(not r.answered for r in results),
        requests=len(results),
        ttft_p99_ms=1000 * _p99([r.ttft_s for r in results if r.ttft_s is not None]),
        replica_seconds=_integral(samples),
    )


def _prompt(client: int, n: int) -> str:
    return f"Client {client} asks, for the {n}th time, what the scheduler does with a queue."


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]


def _integral(samples: list[tuple[float, int]]) -> float:
    return sum((b[0] - a[0]) * a[1] for a, b in itertools.pairwise(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round, a shorter burst")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    burst_s = 14.0 if args.quick else 40.0
    systems = ("kvfleet", "fixed") if args.quick else SYSTEMS
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    redis = RedisServer()
    redis.start()
    outcomes: dict[str, list[Outcome]] = {s: [] for s in systems}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / "demo-tiny"
            write_demo_model(model, preset="tiny", seed=0)
            serve.start(http_options={"location": "NoServer"})
            for r in range(rounds):
                order = systems if r % 2 == 0 else tuple(reversed(systems))
                for system in order:
                    outcome = run_system(system, model, redis.url, burst_s)
                    outcomes[system].append(outcome)
                    print(f"round {r} {system}: {outcome}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        redis.stop()
    print(json.dumps(_figures(outcomes)))


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if len(known) == len(values) else None


def _figures(outcomes: dict[str, list[Outcome]]) -> dict[str, Any]:
    fixed_ttft = statistics.median(o.ttft_p99_ms for o in outcomes["fixed"])
    figures: dict[str, Any] = {"fixed_ttft_p99_ms": round(fixed_ttft, 1)}
    for system, runs in outcomes.items():
        if system == "fixed":
            continue
        prefix = "" if system == "kvfleet" else f"{system}_"
        ttft = statistics.median(o.ttft_p99_ms for o in runs)
        figures |= {
            f"{prefix}scale_up_s": _median([o.scale_up_s for o in runs]),
            f"{prefix}scale_down_s": _median([o.scale_down_s for o in runs]),
            f"{prefix}requests_lost": sum(o.requests_lost for o in runs),
            f"{prefix}ttft_p99_ms": round(ttft, 1),
            f"{prefix}ttft_p99_over_fixed": round(ttft / fixed_ttft, 3),
            f"{prefix}replica_s_over_fixed": round(
                statistics.median(o.replica_seconds for o in runs)
                / statistics.median(o.replica_seconds for o in outcomes["fixed"]),
                3,
            ),
        }
    figures["requests"] = sum(o.requests for runs in outcomes.values() for o in runs)
    return figures


if __name__ == "__main__":
    main()
