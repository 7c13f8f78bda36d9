"""Whole-engine speed on one GPU: a Llama-3-8B-shaped model (hidden 4096, 32 layers, 32 heads,
8 KV heads, intermediate 14336, vocabulary 128256) with random weights (load_format "dummy"),
in bfloat16 (``--quantization int8`` or ``fp8``: its linear layers' weights in 8 bits).
``python -m bench.gpu_decode [--quick]``.

- ``prefill_mfu``: one 2,048-token prompt in one step. FLOPs = 2 x (decoder weights) x tokens +
  the LM head for the one sampled row + causal attention (4 x heads x head_dim per visible
  query-key pair per layer), over the median step time, as a fraction of 989e12 FLOP/s, the
  H100 SXM's dense bf16 peak.
- ``itl_ms_b1``: median milliseconds per decode step of one request (prompt 512 tokens).
- ``tok_s_b32``: decode tokens per second of 32 requests decoding together at a context of
  about 1,024 tokens.

Each figure is measured after a warm-up run of the same shapes (Triton compiles on first use),
between ``torch.cuda.synchronize()`` calls. Decode steps replay the CUDA graphs the engine
captures at start-up (worker/cuda_graphs.py); ``--eager`` measures without them.

Written on a machine without a GPU, so the CUDA path (graphs included) has not been run by its
author yet. Without
CUDA it says so and prints the same keys with null figures. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cluster.demo_model import MAX_POSITIONS, DemoPreset, llama_config
from cluster.demo_tokenizer import train_tokenizer, write_json, write_tokenizer
from worker.config import EngineConfig
from worker.engine import Engine
from worker.model_config import ModelConfig
from worker.sampling_params import SamplingParams

PEAK_BF16_FLOPS = 989e12
SHAPE = DemoPreset(
    num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, intermediate_size=14336
)
VOCAB_SIZE = 128256
PREFILL_TOKENS = 2048
B1_PROMPT = 512
B32_BATCH, B32_CONTEXT = 32, 1024
KV_CACHE_BYTES = 8 * 2**30  # 32 x ~1,100 tokens x 128 KiB per token is about 4.5 GiB
KEYS = ["prefill_mfu", "itl_ms_b1", "tok_s_b32"]


def write_model_dir(path: Path) -> None:
    """config.json of the 8B shape plus the demo tokenizer (the engine tokenizes; the prompts
    here are token ids, so its smaller vocabulary does not matter)."""
    config = llama_config(SHAPE, VOCAB_SIZE, bos_id=0, eos_id=1)
    config.update(rope_theta=500000.0, torch_dtype="bfloat16", max_position_embeddings=8192)
    write_json(path / "config.json", config)
    write_tokenizer(train_tokenizer(8192), path, MAX_POSITIONS)


def random_prompt(length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB_SIZE, (length,), generator=generator).tolist()


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def submit(engine: Engine, prompts: list[list[int]], max_tokens: int, tag: str) -> None:
    for i, prompt in enumerate(prompts):
        engine.add_request(engine.make_request(f"{tag}-{i}", prompt, greedy(max_tokens)))


def timed_step(engine: Engine) -> tuple[float, int]:
    """Seconds of one engine step and the number of tokens it sampled."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = engine.step()
    torch.cuda.synchronize()
    return time.perf_counter() - start, sum(len(out.token_ids) for out in outputs)


def drain(engine: Engine) -> None:
    while engine.has_unfinished():
        engine.step()


def prefill_flops(config: ModelConfig, tokens: int) -> float:
    hidden, head_dim = config.hidden_size, config.head_dim
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    layer_weights = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * config.intermediate_size
    matmuls = 2 * config.num_hidden_layers * layer_weights * tokens + 2 * hidden * VOCAB_SIZE
    pairs = tokens * (tokens + 1) // 2  # causal: query i sees keys 0..i
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * pairs
    return float(matmuls + attention)


def bench_prefill(engine: Engine, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):  # the first run is the warm-up
        submit(engine, [random_prompt(PREFILL_TOKENS, seed=i)], 1, f"prefill{i}")
        elapsed, sampled = timed_step(engine)
        assert sampled == 1, "the whole prompt should be one step"
        drain(engine)
        if i:
            times.append(elapsed)
    flops = prefill_flops(engine.model_config, PREFILL_TOKENS)
    return flops / statistics.median(times) / PEAK_BF16_FLOPS


def bench_decode(engine: Engine, batch: int, context: int, steps: int, tag: str) -> list[float]:
    """Seconds of each of ``steps`` decode steps of ``batch`` requests, after their prefill and
    as many warm-up decode steps."""
    prompts = [random_prompt(context, seed=1000 + i) for i in range(batch)]
    # Requests prefilled first decode while the others prefill: room for those tokens too.
    prefill_steps = -(-batch * context // PREFILL_TOKENS)
    submit(engine, prompts, prefill_steps + 2 * steps + 2, tag)
    started: set[str] = set()
    while len(started) < batch:
        started.update(out.request_id for out in engine.step() if out.token_ids)
    times = []
    for i in range(2 * steps):
        elapsed, sampled = timed_step(engine)
        assert sampled == batch, f"a decode step sampled {sampled} tokens, not {batch}"
        if i >= steps:
            times.append(elapsed)
    for i in range(batch):
        engine.abort(f"{tag}-{i}")
    return times


def run(quick: bool, eager: bool, quantization: str | None) -> dict[str, Any]:
    repeats, steps = (3, 16) if quick else (10, 64)
    with tempfile.TemporaryDirectory() as tmp:
        write_model_dir(Path(tmp))
        engine = Engine(
            EngineConfig(
                model=Path(tmp),
                dtype="bfloat16",
                load_format="dummy",
                kv_cache_bytes=KV_CACHE_BYTES,
                max_num_batched_tokens=PREFILL_TOKENS,
                max_num_seqs=B32_BATCH,
                enable_prefix_caching=False,  # every repeat must really prefill
                enforce_eager=eager,
                quantization=quantization,
            )
        )
        figures: dict[str, Any] = {"prefill_mfu": bench_prefill(engine, repeats)}
        print(f"prefill_mfu: {figures['prefill_mfu']:.3f}")
        b1 = bench_decode(engine, 1, B1_PROMPT, steps, "b1")
        figures["itl_ms_b1"] = statistics.median(b1) * 1e3
        print(f"itl_ms_b1: {figures['itl_ms_b1']:.2f}")
        b32 = bench_decode(engine, B32_BATCH, B32_CONTEXT, steps, "b32")
        figures["tok_s_b32"] = B32_BATCH * len(b32) / sum(b32)
        print(f"tok_s_b32: {figures['tok_s_b32']:.0f}")
        engine.shutdown()
    return {name: round(value, 4) for name, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and decode steps")
    parser.add_argument("--eager", action="store_true", help="decode without CUDA graphs")
    parser.add_argument(
        "--quantization", choices=("int8", "fp8"), default=None, help="weights in 8 bits"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU present: decode and prefill figures are null")
        print(json.dumps({**dict.fromkeys(KEYS), "gpu": None, "cuda_graphs": None}))
        return
    figures = run(args.quick, args.eager, args.quantization)
    device = torch.cuda.get_device_name()
    print(
        json.dumps(
            {
                **figures,
                "gpu": device,
                "cuda_graphs": not args.eager,
                "quantization": args.quantization,
            }
        )
    )


if __name__ == "__main__":
    main()
