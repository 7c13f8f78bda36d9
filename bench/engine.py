"""Engine throughput against Hugging Face transformers on the tiny demo model, CPU, float32.

64 prompts of 170 tokens sharing a 128-token prefix, 128 output tokens each (ignore_eos). The
same prompts then go through transformers' ``generate`` at batch 32, in the same process, with
the same thread count. Last line: one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cluster.demo_model import write_demo_model
from worker.config import EngineConfig
from worker.engine import Engine
from worker.sampling_params import SamplingParams

PREFIX_TEXT = (
    "You are the operations assistant of a GPU cluster that serves language models. Answer "
    "briefly, cite the component you mean (router, scheduler, block pool, replica), and never "
    "guess numbers you have not measured. The cluster runs continuous batching with a paged KV "
    "cache, a prefix cache keyed by chained block hashes, and recompute preemption. "
)


@dataclass(frozen=True)
class Workload:
    num_prompts: int
    prompt_len: int
    prefix_len: int
    output_len: int
    hf_batch: int


def make_prompts(engine: Engine, w: Workload) -> list[list[int]]:
    tok = engine.tokenizer
    prefix = (tok.encode(PREFIX_TEXT) * 4)[: w.prefix_len]
    prompts = []
    for i in range(w.num_prompts):
        question = tok.encode(
            f" Question {i}: why would replica {i % 7} see load {i * 13 % 97}? " * 4
        )
        prompts.append((prefix + question)[: w.prompt_len])
    return prompts


def run_engine(engine: Engine, prompts: list[list[int]], w: Workload) -> dict[str, float]:
    params = SamplingParams(max_tokens=w.output_len, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(engine.make_request(f"b{i}", prompt, params))
    overheads = []
    generated = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        t = engine.times
        before = t.schedule + t.prepare
        outputs = engine.step()
        generated += sum(len(o.token_ids) for o in outputs)
        full_decode = len(engine.scheduler.running) == len(prompts) and all(
            not o.finished for o in outputs
        )
        if full_decode and len(outputs) == len(prompts):
            overheads.append(t.schedule + t.prepare - before)
    elapsed = time.perf_counter() - start
    report = engine.load_report()
    t = engine.times
    return {
        "tok_s": generated / elapsed,
        "elapsed_s": elapsed,
        "steps": t.steps,
        "step_overhead_ms": 1000 * sorted(overheads)[len(overheads) // 2] if overheads else -1.0,
        "schedule_ms_per_step": 1000 * t.schedule / t.steps,
        "prepare_ms_per_step": 1000 * t.prepare / t.steps,
        "execute_ms_per_step": 1000 * t.execute / t.steps,
        "output_ms_per_step": 1000 * t.output / t.steps,
        "prefix_hit_rate": report.prefix_hits / max(report.prefix_queries, 1),
    }


def run_hf(model_dir: Path, prompts: list[list[int]], w: Workload) -> float:
    import transformers

    # Typed loosely: transformers' generate() signature is a union mypy cannot narrow.
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    generated = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), w.hf_batch):
            batch = torch.tensor(prompts[i : i + w.hf_batch])
            out = model.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                max_new_tokens=w.output_len,
                min_new_tokens=w.output_len,
                do_sample=False,
                pad_token_id=0,
            )
            generated += (out.shape[1] - batch.shape[1]) * batch.shape[0]
    return generated / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--rounds", type=int, default=None, help="engine/HF rounds, alternated")
    args = parser.parse_args()
    w = (
        Workload(32, 170, 128, 32, 32)
        if args.quick
        else Workload(num_prompts=64, prompt_len=170, prefix_len=128, output_len=128, hf_batch=32)
    )
    rounds = args.rounds or (1 if args.quick else 3)
    threads = torch.get_num_threads()
    ours: list[dict[str, float]] = []
    hf: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "demo-tiny"
        write_demo_model(model_dir, preset="tiny", seed=0)
        peak_rss_mb = 0.0
        # Alternate the two so that a machine slowing down or speeding up hits both alike.
        for _ in range(rounds):
            engine = Engine(EngineConfig(model=model_dir, dtype="float32"))
            prompts = make_prompts(engine, w)
            ours.append(run_engine(engine, prompts, w))
            del engine
            peak_rss_mb = max(
                peak_rss_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            )
            hf.append(run_hf(model_dir, prompts, w))
    best = sorted(ours, key=lambda r: r["tok_s"])[len(ours) // 2]
    hf_tok_s = sorted(hf)[len(hf) // 2]
    ratios = sorted(o["tok_s"] / h for o, h in zip(ours, hf, strict=True))
    figures = {
        "tok_s": round(best["tok_s"], 1),
        "hf_tok_s": round(hf_tok_s, 1),
        "ratio_vs_hf": round(ratios[len(ratios) // 2], 2),
        "step_overhead_ms": round(best["step_overhead_ms"], 3),
        "prefix_hit_rate": round(best["prefix_hit_rate"], 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    details = {k: round(v, 3) for k, v in best.items() if k not in figures}
    print(f"workload: {w}, torch threads: {threads}, rounds: {rounds}")
    print(
        f"engine tok/s per round: {[round(o['tok_s']) for o in ours]}, hf: {[round(h) for h in hf]}"
    )
    print(f"engine phases (median round): {details}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
