"""Tensor and pipeline parallelism on CPU (gloo), tiny demo model, real Ray actors.

Figures, last line one JSON object:
- step_time_{tp2,pp2,tp2xpp2}_over_tp1: decode step time relative to one rank (a single
  in-process rank; the multi-rank replicas pay for gloo collectives between processes here);
- dispatch_overhead_ms: per step, the driver's wait minus the sampling rank's own time, at 4
  ranks (TP=4): sending the step to every rank and the sampled tokens back;
- param_bytes_per_rank_over_total: TP=2, the largest rank's parameters over the whole model's;
- pp_inflight_speedup: output tokens/s at PP=2 with two batches in flight over one batch, 64
  concurrent requests.
Pipeline runs split the 4 layers 3 + 1 (the last stage also holds the LM head).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from cluster.demo_model import write_demo_model
from worker.config import EngineConfig
from worker.engine import Engine
from worker.sampling_params import SamplingParams


def _run(engine: Engine, num_requests: int, output_len: int) -> dict[str, float]:
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    for i in range(num_requests):
        engine.add_request(
            engine.make_request(f"r{i}", [5 + (i * 7 + j) % 4000 for j in range(48)], params)
        )
    executor: Any = engine.executor
    rank_before = getattr(executor, "rank_execute_s", 0.0)
    times = engine.times
    exec_before, steps_before = times.execute, times.steps
    generated = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        generated += sum(len(o.token_ids) for o in engine.step())
    elapsed = time.perf_counter() - start
    steps = times.steps - steps_before
    wait = times.execute - exec_before
    rank = getattr(executor, "rank_execute_s", 0.0) - rank_before
    return {
        "tok_s": generated / elapsed,
        "step_ms": 1000 * elapsed / steps,
        # Meaningful without pipelining only: with stages in flight the rank's time overlaps.
        "dispatch_ms": 1000 * (wait - rank) / steps if rank else 0.0,
    }


def _engine(model: Path, tp: int = 1, pp: int = 1, split: tuple[int, ...] | None = None) -> Engine:
    return Engine(
        EngineConfig(
            model=model, tensor_parallel_size=tp, pipeline_parallel_size=pp, layer_split=split
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    args = parser.parse_args()
    requests, output_len = (16, 16) if args.quick else (64, 64)
    ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "demo-tiny"
        write_demo_model(model, preset="tiny", seed=0)
        single = _engine(model)
        base = _run(single, requests, output_len)
        print(f"tp1: {base}")
        # The last stage also runs the LM head over an 8k vocabulary and samples, so the
        # pipeline is balanced by giving it one layer fewer.
        configs = {"tp2": (2, 1, None), "pp2": (1, 2, (3, 1)), "tp2xpp2": (2, 2, (3, 1))}
        for name, (tp, pp, split) in configs.items():
            engine = _engine(model, tp, pp, split)
            try:
                result = _run(engine, requests, output_len)
                print(f"{name}: {result}")
                figures[f"step_time_{name}_over_tp1"] = round(
                    result["step_ms"] / base["step_ms"], 2
                )
                if name == "tp2":
                    ranks: Any = engine.executor
                    local: Any = single.executor
                    sizes = ray.get([w.param_bytes.remote() for w in ranks.workers])
                    total = sum(
                        p.numel() * p.element_size() for p in local.runner.model.parameters()
                    )
                    figures["param_bytes_per_rank_over_total"] = round(max(sizes) / total, 3)
                if name == "pp2":
                    # Alternated, so that the machine's drift hits both settings alike.
                    ratios = []
                    for _ in range(2 if args.quick else 3):
                        engine.executor.max_in_flight = 1
                        one = _run(engine, requests, output_len)
                        engine.executor.max_in_flight = 2
                        two = _run(engine, requests, output_len)
                        ratios.append(two["tok_s"] / one["tok_s"])
                        print(f"pp2 one batch in flight: {one}; two: {two}")
                    figures["pp_inflight_speedup"] = round(sorted(ratios)[len(ratios) // 2], 2)
            finally:
                engine.shutdown()
        tp4 = _engine(model, 4, 1)
        try:
            result = _run(tp4, requests, output_len)
            print(f"tp4: {result}")
            figures["dispatch_overhead_ms"] = round(result["dispatch_ms"], 3)
        finally:
            tp4.shutdown()
    ray.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
