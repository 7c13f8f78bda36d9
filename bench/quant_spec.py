"""Quantization and speculative decoding, measured on CPU with one torch thread (``--threads``).

Weights: bytes of the linear layers (the quantized part) in int8 and fp8 over bfloat16
(``weight_bytes_ratio_int8``, target <= 0.55), and of the whole model, whose embedding and LM
head stay in bfloat16: the tiny demo model, whose 8,192 x 256 tables are most of it, and (full
run) a model of Llama 3.2 1B's shape (random weights) where they are a fifth.

KV cache: bytes per cached token in int8 / fp8 over bfloat16 (``kv_bytes_ratio_fp8``) and the
blocks an engine gets from the same ``kv_cache_bytes`` (``kv_blocks_ratio_fp8``).

Accuracy: perplexity on bench/data/heldout.txt (a text written for this, in no training data)
of the demo model trained briefly on the tokenizer's corpus (bench/trained_demo.py; with
``--quick`` the random-weight demo model, whose perplexity is about its vocabulary size and so
says little), float32 against int8 / fp8 weights and int8 / fp8 KV: relative changes
``ppl_delta_*``.

Speculative decoding, closed loop (every request submitted at once, greedy, 96 new tokens, no
EOS), on "quoted" prompts: a passage of the corpus followed by its own first 64 tokens again,
where prompt lookup finds drafts in the context. For prompt lookup (kvfleet's most recent
match), the reference of vLLM's ngram drafter (first match, bench/vllm_ngram.py) in the same
engine, and a draft model equal to the target (every draft accepted: the machinery's overhead
with a perfect drafter): accepted drafts over proposed, output tok/s over the same engine
without speculation (``*_speedup``) with 8 requests and alone (``*_b1``), and target forward
passes per output token alone (``draft_tokens_per_forward``, target >= 2 at k = 4).

Decode speed on this CPU, in bfloat16 (the random demo model, quoted prompts, 96 new tokens):
output tok/s with int8 and fp8 weights, and int8 and fp8 KV, over full precision, one request
and 32 at once (``cpu_decode_*_over_bf16_b1`` / ``_b32``). On a GPU (not measured here: the
figure is null): decode tok/s with int8 and fp8 weights over bfloat16 at batch 1 and 32 is
``python -m bench.gpu_decode --quantization ...`` in ``make gpu-check``.

Rounds alternate each configuration with its baseline; figures are medians. Last line: one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.perplexity import HELDOUT, perplexity
from bench.trained_demo import CORPUS, trained_demo_model
from bench.vllm_ngram import FirstMatchNgram
from cluster.demo_model import DemoPreset, llama_config, write_demo_model
from worker.config import EngineConfig
from worker.engine import Engine
from worker.model.linear import QuantizableLinear
from worker.model.loader import load_model
from worker.model.quantization import weight_bytes
from worker.model_config import ModelConfig
from worker.request_builder import num_kv_blocks
from worker.sampling_params import SamplingParams
from worker.tokenizer import Tokenizer

K = 4
OUTPUT_LEN = 96
TRAIN_STEPS = 200
# Llama 3.2 1B: 16 layers, hidden 2,048, 32 query and 8 KV heads, MLP 8,192, vocabulary 128,256.
LLAMA_1B = DemoPreset(
    num_layers=16, hidden_size=2048, num_heads=32, num_kv_heads=8, intermediate_size=8192
)


def weight_figures(model_dir: Path, prefix: str) -> dict[str, float]:
    """Linear-layer and whole-model bytes with int8 and fp8 weights over bfloat16."""
    config = ModelConfig.from_dir(model_dir, "bfloat16")
    sizes: dict[str | None, tuple[int, int]] = {}
    for quantization in (None, "int8", "fp8"):
        model = load_model(model_dir, config, load_format="dummy", quantization=quantization)
        linear = sum(weight_bytes(m) for m in model.modules() if isinstance(m, QuantizableLinear))
        sizes[quantization] = (linear, weight_bytes(model))
        del model
    (base_linear, base_total) = sizes[None]
    figures = {}
    for quantization in ("int8", "fp8"):
        linear, total = sizes[quantization]
        figures[f"{prefix}weight_bytes_ratio_{quantization}"] = round(linear / base_linear, 4)
        figures[f"{prefix}model_bytes_ratio_{quantization}"] = round(total / base_total, 4)
    return figures


def kv_figures(model_dir: Path) -> dict[str, float]:
    def blocks(kv_cache_dtype: str) -> int:
        config = EngineConfig(model=model_dir, dtype="bfloat16", kv_cache_dtype=kv_cache_dtype)
        return num_kv_blocks(config, ModelConfig.from_dir(model_dir, "bfloat16"))

    base = blocks("auto")
    figures: dict[str, float] = {"kv_blocks_bf16": base}
    for kv in ("int8", "fp8"):
        figures[f"kv_blocks_{kv}"] = blocks(kv)
        figures[f"kv_bytes_ratio_{kv}"] = round(base / blocks(kv), 4)
        figures[f"kv_blocks_ratio_{kv}"] = round(blocks(kv) / base, 4)
    return figures


def ppl_figures(model_dir: Path) -> dict[str, float]:
    tokens = Tokenizer.from_dir(model_dir).encode(HELDOUT.read_text())
    config = ModelConfig.from_dir(model_dir, "float32")

    def ppl(quantization: str | None = None, kv: str = "auto") -> float:
        return perplexity(load_model(model_dir, config, quantization=quantization), tokens, kv)

    base = ppl()
    figures = {"heldout_tokens": len(tokens), "ppl_float32": round(base, 3)}
    for name, value in (
        ("int8", ppl("int8")),
        ("fp8", ppl("fp8")),
        ("kv_int8", ppl(kv="int8")),
        ("kv_fp8", ppl(kv="fp8")),
    ):
        figures[f"ppl_{name}"] = round(value, 3)
        figures[f"ppl_delta_{name}"] = round(value / base - 1, 5)
    return figures


def decode_round(model_dir: Path, prompts: dict[str, list[int]]) -> dict[str, float]:
    """Output tok/s in bfloat16 with full-precision, int8 and fp8 weights, and int8 and fp8 KV,
    all of ``prompts`` at once (alternated within the round)."""
    variants: dict[str, dict[str, Any]] = {
        "bf16": {},
        "int8": {"quantization": "int8"},
        "fp8": {"quantization": "fp8"},
        "kv_int8": {"kv_cache_dtype": "int8"},
        "kv_fp8": {"kv_cache_dtype": "fp8"},
    }
    row = {}
    for name, overrides in variants.items():
        engine = Engine(EngineConfig(model=model_dir, dtype="bfloat16", **overrides))
        serve(engine, dict(list(prompts.items())[:1]))  # warm up
        row[name] = serve(engine, prompts)["tok_s"]
    return row


def quoted_prompts(model_dir: Path, count: int) -> dict[str, list[int]]:
    """A 384-token passage of the corpus, then its first 64 tokens again."""
    text = "".join(p.read_text() for p in sorted(CORPUS.glob("*.txt")))
    ids = Tokenizer.from_dir(model_dir).encode(text)
    stride = (len(ids) - 384) // count
    return {
        f"q{i}": ids[i * stride : i * stride + 384] + ids[i * stride : i * stride + 64]
        for i in range(count)
    }


def serve(engine: Engine, prompts: dict[str, list[int]]) -> dict[str, float]:
    """Every prompt at once, until all finish: tok/s, drafts proposed and accepted, steps."""
    params = SamplingParams(max_tokens=OUTPUT_LEN, temperature=0.0, ignore_eos=True)
    for rid, prompt in prompts.items():
        engine.add_request(engine.make_request(rid, prompt, params))
    tokens: dict[str, list[int]] = {rid: [] for rid in prompts}
    proposed = accepted = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
            if out.finished:
                proposed += out.num_draft_tokens
                accepted += out.num_accepted_tokens
    elapsed = time.perf_counter() - start
    return {
        "tok_s": len(prompts) * OUTPUT_LEN / elapsed,
        "proposed": proposed,
        "accepted": accepted,
        "steps": engine.times.steps,
        "tokens": tokens,  # type: ignore[dict-item]
    }


def spec_round(model_dir: Path, prompts: dict[str, list[int]]) -> dict[str, float]:
    """One round: the engine without speculation, then each drafter, on ``prompts``."""

    def engine(**overrides: Any) -> Engine:
        config = EngineConfig(
            model=model_dir, dtype="float32", num_speculative_tokens=K, **overrides
        )
        built = Engine(config)
        serve(built, dict(list(prompts.items())[:1]))  # warm up: the first steps build caches
        built.times.steps = 0
        return built

    def vllm_reference() -> Engine:
        built = engine(speculative_method="prompt_lookup")
        built.prompt_lookup = FirstMatchNgram(
            built.config.prompt_lookup_min, built.config.prompt_lookup_max
        )  # type: ignore[assignment]
        return built

    runs: dict[str, Callable[[], Engine]] = {
        "base": engine,
        "lookup": lambda: engine(speculative_method="prompt_lookup"),
        "vllm_ngram": vllm_reference,
        "draft": lambda: engine(speculative_method="draft_model", draft_model=model_dir),
    }
    results = {name: serve(make(), prompts) for name, make in runs.items()}
    base = results["base"]
    row: dict[str, float] = {"base_tok_s": base["tok_s"]}
    for name in ("lookup", "vllm_ngram", "draft"):
        result = results[name]
        assert result["tokens"] == base["tokens"], f"{name}: greedy output differs"
        row[f"{name}_tok_s"] = result["tok_s"]
        row[f"{name}_speedup"] = result["tok_s"] / base["tok_s"]
        row[f"{name}_accept_rate"] = result["accepted"] / max(1, result["proposed"])
        # One prefill step, then decode steps: output tokens after the first per step.
        row[f"{name}_tokens_per_forward"] = (OUTPUT_LEN - 1) / max(1, result["steps"] - 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 3)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo-tiny"
        write_demo_model(demo, preset="tiny", seed=0)
        figures.update(weight_figures(demo, ""))
        if not args.quick:
            big = Path(tmp) / "llama-1b-shape"
            big.mkdir()
            config = llama_config(LLAMA_1B, 128256, 128000, 128001)
            (big / "config.json").write_text(json.dumps(config))
            figures.update(weight_figures(big, "llama1b_"))
        figures.update(kv_figures(demo))
        model_dir = demo if args.quick else trained_demo_model(TRAIN_STEPS)
        figures["ppl_model"] = "random demo" if args.quick else f"demo trained {TRAIN_STEPS} steps"
        figures.update(ppl_figures(model_dir))
        prompts = quoted_prompts(model_dir, args.requests)
        alone = dict(list(prompts.items())[1:2])
        batched: list[dict[str, float]] = []
        single: list[dict[str, float]] = []
        decode_b1: list[dict[str, float]] = []
        decode_b32: list[dict[str, float]] = []
        many = quoted_prompts(demo, 32)
        for _ in range(rounds):
            batched.append(spec_round(model_dir, prompts))
            single.append(spec_round(model_dir, alone))
            decode_b1.append(decode_round(demo, dict(list(many.items())[:1])))
            decode_b32.append(decode_round(demo, many))

    def median(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(row[key] for row in rows), 3)

    for name, label in (("lookup", "spec"), ("vllm_ngram", "vllm_ngram"), ("draft", "draft")):
        figures[f"{label}_accept_rate"] = median(batched, f"{name}_accept_rate")
        figures[f"{label}_speedup"] = median(batched, f"{name}_speedup")
        figures[f"{label}_speedup_b1"] = median(single, f"{name}_speedup")
        figures[f"{label}_tokens_per_forward"] = median(single, f"{name}_tokens_per_forward")
    figures["spec_over_vllm_ngram"] = round(
        statistics.median(row["lookup_tok_s"] / row["vllm_ngram_tok_s"] for row in batched), 3
    )
    for rows, batch in ((decode_b1, "b1"), (decode_b32, "b32")):
        figures[f"cpu_decode_tok_s_bf16_{batch}"] = median(rows, "bf16")
        for name in ("int8", "fp8", "kv_int8", "kv_fp8"):
            ratio = statistics.median(row[name] / row["bf16"] for row in rows)
            figures[f"cpu_decode_{name}_over_bf16_{batch}"] = round(ratio, 3)
    figures["base_tok_s"] = median(batched, "base_tok_s")
    figures["base_tok_s_b1"] = median(single, "base_tok_s")
    figures.update(
        {
            "num_speculative_tokens": K,
            "requests": args.requests,
            "output_len": OUTPUT_LEN,
            "rounds": rounds,
            "threads": args.threads,
            "gpu_decode": None,
        }
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
