"""Several sequences over one prompt, on the tiny demo model, CPU, one torch thread (``--threads``):

- ``n`` = 8 samples of a 1,000-token prompt as one request (sequences sharing the prompt's
  blocks) against 8 separate requests for the same prompt sent at once, prefix caching on (the
  requests admitted after the first step find the prompt cached and share its full blocks too):
  peak KV blocks in use and output tok/s, ``blocks_ratio`` (target <= 0.3) and ``n_speedup``;
  ``blocks_ratio_uncached`` against the separate requests with prefix caching off;
- beam search at width 4 (``--prompts`` prompts, 32 new tokens each, no EOS) against
  transformers' ``generate(num_beams=4)`` on the same prompts as one batch: output tok/s (the
  best beam's tokens) and ``beam_over_hf`` (target >= 2) with prompts of 512 tokens, where a
  beam's context is mostly the shared prompt (transformers reorders every beam's whole cache
  at each step, kvfleet's beams share the prompt's blocks), and the same with prompts of 64
  tokens (``*_64``), where the forward pass is nearly all the work; and the share of prompts
  whose best beam is transformers' own (``beams_equal_hf``).

Rounds alternate kvfleet and its baseline; figures are medians. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.engine import load_hf
from cluster.demo_model import write_demo_model
from worker.config import EngineConfig
from worker.engine import Engine
from worker.sampling_params import SamplingParams

N, BEAM_WIDTH = 8, 4


def run(engine: Engine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, Any]:
    """Every request at once, closed loop until all finish: elapsed seconds, peak blocks in
    use, and each request's sequences (index → tokens)."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(engine.make_request(rid, prompt, params))
    pool = engine.kv.pool
    peak = 0
    tokens: dict[tuple[str, int], list[int]] = {}
    start = time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault((out.request_id, out.index), []).extend(out.token_ids)
        peak = max(peak, pool.num_blocks - pool.num_free)
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "peak_blocks": peak, "tokens": tokens}


def sampling_round(model_dir: Path, prompt: list[int], output_len: int) -> dict[str, float]:
    params = SamplingParams(max_tokens=output_len, temperature=0.8, seed=1, ignore_eos=True)
    fresh = lambda: Engine(EngineConfig(model=model_dir, dtype="float32"))  # noqa: E731
    group = run(fresh(), {"g": (prompt, SamplingParams(**{**vars(params), "n": N}))})
    separate = run(
        fresh(),
        {f"s{i}": (prompt, SamplingParams(**{**vars(params), "seed": 1 + i})) for i in range(N)},
    )
    uncached = run(
        Engine(EngineConfig(model=model_dir, dtype="float32", enable_prefix_caching=False)),
        {f"s{i}": (prompt, params) for i in range(N)},
    )
    assert [group["tokens"][("g", i)] for i in range(N)] == [
        separate["tokens"][(f"s{i}", 0)] for i in range(N)
    ], "n samples differ from separately seeded requests"
    output_tokens = N * output_len
    return {
        "group_blocks": group["peak_blocks"],
        "separate_blocks": separate["peak_blocks"],
        "uncached_blocks": uncached["peak_blocks"],
        "group_tok_s": output_tokens / group["elapsed"],
        "separate_tok_s": output_tokens / separate["elapsed"],
    }


def beam_round(
    model_dir: Path, hf: Any, prompts: list[list[int]], output_len: int
) -> dict[str, float]:
    params = SamplingParams(
        max_tokens=output_len, temperature=0.0, beam_width=BEAM_WIDTH, ignore_eos=True
    )
    engine = Engine(EngineConfig(model=model_dir, dtype="float32"))
    ours = run(engine, {f"b{i}": (p, params) for i, p in enumerate(prompts)})
    start = time.perf_counter()
    with torch.inference_mode():
        ids = torch.tensor(prompts)
        theirs = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            num_beams=BEAM_WIDTH,
            max_new_tokens=output_len,
            min_new_tokens=output_len,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    hf_elapsed = time.perf_counter() - start
    equal = sum(
        ours["tokens"][(f"b{i}", 0)] == theirs[i, len(p) :].tolist() for i, p in enumerate(prompts)
    )
    output_tokens = len(prompts) * output_len
    return {
        "beam_tok_s": output_tokens / ours["elapsed"],
        "hf_beam_tok_s": output_tokens / hf_elapsed,
        "beams_equal_hf": equal / len(prompts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8, help="beam search prompts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 3)
    output_len = 16 if args.quick else 32
    rng = random.Random(0)
    long_prompt = [rng.randrange(2, 8000) for _ in range(1000)]
    beam_prompts = {
        length: [[rng.randrange(2, 8000) for _ in range(length)] for _ in range(args.prompts)]
        for length in (512, 64)
    }
    samples: list[dict[str, float]] = []
    beams: list[dict[str, float]] = []
    beams_64: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "demo-tiny"
        write_demo_model(model_dir, preset="tiny", seed=0)
        hf = load_hf(model_dir, torch.float32)
        for _ in range(rounds):
            samples.append(sampling_round(model_dir, long_prompt, output_len))
            beams.append(beam_round(model_dir, hf, beam_prompts[512], output_len))
            beams_64.append(beam_round(model_dir, hf, beam_prompts[64], output_len))

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    def ratio(rows: list[dict[str, float]], ours: str, theirs: str) -> float:
        return statistics.median(row[ours] / row[theirs] for row in rows)

    figures = {
        "n": N,
        "prompt_tokens": len(long_prompt),
        "group_blocks": median(samples, "group_blocks"),
        "separate_blocks": median(samples, "separate_blocks"),
        "blocks_ratio": round(ratio(samples, "group_blocks", "separate_blocks"), 3),
        "uncached_blocks": median(samples, "uncached_blocks"),
        "blocks_ratio_uncached": round(ratio(samples, "group_blocks", "uncached_blocks"), 3),
        "group_tok_s": round(median(samples, "group_tok_s"), 1),
        "separate_tok_s": round(median(samples, "separate_tok_s"), 1),
        "n_speedup": round(ratio(samples, "group_tok_s", "separate_tok_s"), 3),
        "beam_width": BEAM_WIDTH,
        "beam_tok_s": round(median(beams, "beam_tok_s"), 1),
        "hf_beam_tok_s": round(median(beams, "hf_beam_tok_s"), 1),
        "beam_over_hf": round(ratio(beams, "beam_tok_s", "hf_beam_tok_s"), 3),
        "beam_tok_s_64": round(median(beams_64, "beam_tok_s"), 1),
        "hf_beam_tok_s_64": round(median(beams_64, "hf_beam_tok_s"), 1),
        "beam_over_hf_64": round(ratio(beams_64, "beam_tok_s", "hf_beam_tok_s"), 3),
        "beams_equal_hf": min(median(beams, "beams_equal_hf"), median(beams_64, "beams_equal_hf")),
        "output_len": output_len,
        "rounds": rounds,
        "threads": args.threads,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
