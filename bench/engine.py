"""Engine throughput against Hugging Face transformers on the tiny demo model, CPU.

In one run, at one torch thread count (1 unless --threads), with kvfleet and transformers
alternated in rounds and medians reported:

- ``tok_s_64``, ``tok_s_256``: 64 and 256 prompts of 170 tokens (sharing a 128-token prefix),
  128 output tokens each, ignore_eos, float32; ``scaling_256_over_64``;
- ``ms_per_token_b1``: one prompt, 128 tokens, against transformers' own at batch 1;
- ``ratio_vs_hf``: kvfleet at 64 prompts over transformers ``generate`` at batch 32 on the
  same prompts, float32; ``ratio_vs_hf_bf16`` the same with both in bfloat16 where the
  processor computes bf16 natively (null elsewhere);
- ``step_overhead_ms``: scheduling plus input preparation per step with 64 running;
- ``compiled_over_eager_64``, ``compiled_over_eager_b1``: decode steps compiled by
  torch.compile (``torch_compile``, off by default on a CPU) over the same engine eager, in
  output tok/s; ``compile_s``, the first engine's start-up compilation (later ones in the same
  process reuse its graphs);
- ``peak_rss_mb``.

Last line: one JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cluster.demo_model import write_demo_model
from worker.config import EngineConfig
from worker.dtype_choice import cpu_has_native_bf16
from worker.engine import Engine
from worker.sampling_params import SamplingParams

PREFIX_TEXT = (
    "You are the operations assistant of a GPU cluster that serves language models. Answer "
    "briefly, cite the component you mean (router, scheduler, block pool, replica), and never "
    "guess numbers you have not measured. The cluster runs continuous batching with a paged KV "
    "cache, a prefix cache keyed by chained block hashes, and recompute preemption. "
)
PROMPT_LEN, PREFIX_LEN, HF_BATCH = 170, 128, 32


@dataclass(frozen=True)
class Workload:
    num_prompts: int
    output_len: int


def make_prompts(engine: Engine, num_prompts: int) -> list[list[int]]:
    tok = engine.tokenizer
    prefix = (tok.encode(PREFIX_TEXT) * 4)[:PREFIX_LEN]
    prompts = []
    for i in range(num_prompts):
        question = tok.encode(
            f" Question {i}: why would replica {i % 7} see load {i * 13 % 97}? " * 4
        )
        prompts.append((prefix + question)[:PROMPT_LEN])
    return prompts


def run_engine(engine: Engine, prompts: list[list[int]], output_len: int) -> dict[str, float]:
    """Output tok/s, wall time per step, and the scheduling + preparation time of the steps in
    which every prompt was running."""
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(engine.make_request(f"b{i}", prompt, params))
    overheads = []
    generated = 0
    steps_before = engine.times.steps
    start = time.perf_counter()
    while engine.has_unfinished():
        t = engine.times
        before = t.schedule + t.prepare
        outputs = engine.step()
        generated += sum(len(o.token_ids) for o in outputs)
        if len(outputs) == len(prompts) and not any(o.finished for o in outputs):
            overheads.append(t.schedule + t.prepare - before)
    elapsed = time.perf_counter() - start
    return {
        "tok_s": generated / elapsed,
        "ms_per_step": 1000 * elapsed / (engine.times.steps - steps_before),
        "step_overhead_ms": 1000 * statistics.median(overheads) if overheads else -1.0,
    }


def run_hf(model: Any, prompts: list[list[int]], output_len: int, batch: int) -> float:
    """transformers ``generate`` output tok/s, ``batch`` prompts at a time."""
    generated = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            ids = torch.tensor(prompts[i : i + batch])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                do_sample=False,
                pad_token_id=0,
            )
            generated += (out.shape[1] - ids.shape[1]) * ids.shape[0]
    return generated / (time.perf_counter() - start)


def load_hf(model_dir: Path, dtype: torch.dtype) -> Any:
    import transformers

    # Typed loosely: transformers' generate() signature is a union mypy cannot narrow.
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    return model.eval()


def median_of(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--rounds", type=int, default=None, help="rounds, alternated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    output_len = 32 if args.quick else 128
    rounds = args.rounds or (1 if args.quick else 3)
    bf16 = cpu_has_native_bf16()
    dtypes = ["float32", "bfloat16"] if bf16 else ["float32"]
    results: dict[str, list[dict[str, float]]] = {}

    def record(name: str, figures: dict[str, float]) -> None:
        results.setdefault(name, []).append(figures)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "demo-tiny"
        write_demo_model(model_dir, preset="tiny", seed=0)
        hf_models = {dtype: load_hf(model_dir, getattr(torch, dtype)) for dtype in dtypes}

        compile_s: list[float] = []

        def fresh(dtype: str, compiled: bool = False) -> Engine:
            """A new engine per run, so that no run finds the previous one's prompts cached."""
            config = EngineConfig(
                model=model_dir, dtype=dtype, max_num_seqs=256, torch_compile=compiled
            )
            engine = Engine(config)
            runner = getattr(engine.executor, "runner", None)
            if runner is not None and runner.compiled is not None:
                compile_s.append(runner.compiled.compile_s)
            return engine

        prompts = make_prompts(fresh("float32"), 256)
        # Alternate kvfleet and transformers so that a machine slowing down or speeding up
        # hits both alike.
        for _ in range(rounds):
            for dtype in dtypes:
                record(f"ours_64_{dtype}", run_engine(fresh(dtype), prompts[:64], output_len))
                hf = hf_models[dtype]
                record(f"hf_64_{dtype}", {"tok_s": run_hf(hf, prompts[:64], output_len, HF_BATCH)})
            record("ours_256", run_engine(fresh("float32"), prompts, output_len))
            record("ours_b1", run_engine(fresh("float32"), prompts[:1], output_len))
            record("compiled_64", run_engine(fresh("float32", True), prompts[:64], output_len))
            record("compiled_b1", run_engine(fresh("float32", True), prompts[:1], output_len))
            hf32 = hf_models["float32"]
            record("hf_b1", {"tok_s": run_hf(hf32, prompts[:1], output_len, 1)})
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def ratio(ours: str, theirs: str) -> float:
        pairs = zip(results[ours], results[theirs], strict=True)
        return statistics.median(o["tok_s"] / h["tok_s"] for o, h in pairs)

    tok_s_64 = median_of(results["ours_64_float32"], "tok_s")
    tok_s_256 = median_of(results["ours_256"], "tok_s")
    ms_b1 = 1000 / median_of(results["ours_b1"], "tok_s")
    hf_ms_b1 = 1000 / median_of(results["hf_b1"], "tok_s")
    figures = {
        "tok_s_64": round(tok_s_64, 1),
        "tok_s_256": round(tok_s_256, 1),
        "scaling_256_over_64": round(tok_s_256 / tok_s_64, 3),
        "ms_per_token_b1": round(ms_b1, 3),
        "hf_ms_per_token_b1": round(hf_ms_b1, 3),
        "b1_over_hf": round(ms_b1 / hf_ms_b1, 3),
        "hf_tok_s": round(median_of(results["hf_64_float32"], "tok_s"), 1),
        "ratio_vs_hf": round(ratio("ours_64_float32", "hf_64_float32"), 3),
        "tok_s_64_bf16": round(median_of(results["ours_64_bfloat16"], "tok_s"), 1)
        if bf16
        else None,
        "hf_tok_s_bf16": round(median_of(results["hf_64_bfloat16"], "tok_s"), 1) if bf16 else None,
        "ratio_vs_hf_bf16": round(ratio("ours_64_bfloat16", "hf_64_bfloat16"), 3) if bf16 else None,
        "step_overhead_ms": round(median_of(results["ours_64_float32"], "step_overhead_ms"), 3),
        "compiled_over_eager_64": round(ratio("compiled_64", "ours_64_float32"), 3),
        "compiled_over_eager_b1": round(ratio("compiled_b1", "ours_b1"), 3),
        "compile_s": round(compile_s[0], 2) if compile_s else None,
        "ms_per_step_256": round(median_of(results["ours_256"], "ms_per_step"), 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "threads": args.threads,
        "rounds": rounds,
        "output_len": output_len,
    }
    for name, runs in results.items():
        print(f"{name}: tok/s per round {[round(r['tok_s']) for r in runs]}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
