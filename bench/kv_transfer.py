"""KV transfer and disaggregated serving on the demo model (tiny preset, the engine's default
dtype, one torch thread per process).

  transfer_gbs           one 1,024-token prompt's KV moved between two processes by each
                         transport, and memcpy: a same-process copy of the same bytes
                         (bench/transfer_rounds.py says what each interval covers)
  transfer_over_prefill  the fastest transport's time for those blocks over the time to
                         prefill that prompt
  serving                disaggregated against colocated serving through the gRPC front door,
                         closed loop under long-prompt interference (bench/pd_serving.py)

Rounds alternate the systems; figures are medians over rounds. Targets (CPU): the fastest
transport >= 0.3x memcpy; transfer_over_prefill <= 0.25; disaggregated p99 inter-token latency
below colocated's with output throughput >= 0.9x colocated's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import serve

from bench import pd_serving, transfer_rounds
from cluster.demo_model import write_demo_model
from cluster.redis_server import RedisServer

PROMPT_LEN = 1024
WARMUP = 4  # transfers per transport before the measured rounds
PORT = 50091


def transfer_figures(model: Path, rounds: int) -> dict[str, Any]:
    engine = transfer_rounds.demo_engine(model)
    layout = engine.kv_layout
    dtype = engine.executor.runner.kv_caches[0].dtype  # type: ignore[attr-defined]
    count = -(-(PROMPT_LEN - 1) // layout.block_size)  # what a decode replica pulls
    num_bytes = count * layout.num_layers * 2 * layout.block_bytes
    kinds = transfer_rounds.transports()
    rig = transfer_rounds.TransferRig(
        kinds, layout.num_layers, transfer_rounds.cache_shape(engine), dtype
    )
    times: dict[str, list[float]] = {k: [] for k in [*kinds, "memcpy", "prefill"]}
    try:
        for kind in kinds:  # the first reads connect and warm up (UCX): not counted
            for warm in range(WARMUP):
                rig.move(kind, *transfer_rounds.scattered_blocks(count, seed=-1 - warm))
        transfer_rounds.prefill_s(engine, PROMPT_LEN, seed=-1)
        for r in range(rounds):
            src, dst = transfer_rounds.scattered_blocks(count, seed=r)
            order = kinds if r % 2 == 0 else list(reversed(kinds))
            for kind in order:
                times[kind].append(rig.move(kind, src, dst))
            times["memcpy"].append(transfer_rounds.memcpy_s(num_bytes, dtype))
            times["prefill"].append(transfer_rounds.prefill_s(engine, PROMPT_LEN, seed=r))
    finally:
        rig.close()
        engine.shutdown()
    median = {k: transfer_rounds.median(v) for k, v in times.items()}
    gbs = {k: round(num_bytes / median[k] / 1e9, 3) for k in [*kinds, "memcpy"]}
    fastest = min(kinds, key=lambda k: median[k])
    return {
        "transfer_gbs": gbs,
        "transfer_bytes": num_bytes,
        "transfer_ms": {k: round(1000 * median[k], 3) for k in kinds},
        "prefill_ms": round(1000 * median["prefill"], 2),
        "fastest_transport": fastest,
        "fastest_over_memcpy": round(gbs[fastest] / gbs["memcpy"], 3),
        "transfer_over_prefill": round(median[fastest] / median["prefill"], 4),
        "dtype": str(dtype).removeprefix("torch."),
    }


def serving_figures(
    model: Path, rounds: int, seconds: float, clients: int, systems: tuple[str, ...]
) -> dict[str, Any]:
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    redis = RedisServer()
    redis.start()
    doors = {}
    results: dict[str, list[pd_serving.Round]] = {s: [] for s in systems}
    try:
        serve.start(http_options={"location": "NoServer"})
        for i, system in enumerate(systems):
            doors[system] = pd_serving.start(system, model, redis.url, PORT + i)
        vocab = 8192
        for r in range(rounds):
            order = systems if r % 2 == 0 else tuple(reversed(systems))
            for system in order:
                result = pd_serving.run_round(doors[system].target, clients, seconds, vocab, r)
                results[system].append(result)
                print(f"round {r} {system}: {result}", flush=True)
    finally:
        for door in doors.values():
            door.stop()
        serve.shutdown()
        ray.shutdown()
        redis.stop()
    return pd_serving.figures(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a version under a minute")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="per serving round")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transfer_rounds_n = 5 if args.quick else 21
    serving_rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (6.0 if args.quick else 30.0)
    systems = pd_serving.SYSTEMS[:2] if args.quick else pd_serving.SYSTEMS
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "demo-tiny"
        write_demo_model(model, preset="tiny", seed=0)
        figures = transfer_figures(model, transfer_rounds_n)
        print(f"transfer: {figures}", flush=True)
        figures["serving"] = serving_figures(model, serving_rounds, seconds, args.clients, systems)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
