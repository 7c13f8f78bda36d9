"""Triton kernel speed on a GPU, in bfloat16 at Llama-3-8B shapes (32 heads, 8 KV heads, head_dim
128, hidden 4096, intermediate 14336, KV block 16). ``python -m bench.kernels [--quick]``.

- ``decode_attn_hbm_frac``: paged decode attention, batch 64, context 2048. The bytes it must
  move (every context token's key and value, plus query and output) over the median time, as a
  fraction of 3.35e12 B/s, the H100 SXM's HBM3 bandwidth.
- ``block_gather_gbs``: gathering the KV blocks of 2048 tokens (128 blocks) from each of 32 layer
  caches into one transfer buffer per layer, 256 MiB in all; GB/s = buffer bytes / time. Every
  byte is read once and written once, so memory traffic is twice that. ``block_scatter_gbs``: the
  way back.
- ``*_us``: median microseconds per call of each kernel (CUDA events, after warm-up).

Without a GPU (or without Triton) it says so and prints the same keys with null figures. Last
line: one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
from collections.abc import Callable
from typing import Any

import torch

from kernels import ops
from kernels.attention_metadata import PagedAttentionMetadata

HBM_BYTES_PER_S = 3.35e12
HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
HIDDEN, INTERMEDIATE, LAYERS = 4096, 14336, 32
DECODE_BATCH, DECODE_CONTEXT = 64, 2048
GATHER_TOKENS = 2048
PREFILL_SEQS, PREFILL_CHUNK, PREFILL_PREFIX = 4, 512, 1536
ROWS = 2048  # tokens in a prefill step, for the elementwise kernels
DTYPE = torch.bfloat16
DEVICE = "cuda"
KEYS = [
    "decode_attn_hbm_frac",
    "decode_attn_us",
    "prefill_attn_us",
    "prefill_attn_tflops",
    "block_gather_gbs",
    "block_scatter_gbs",
    "store_kv_us",
    "rms_norm_us",
    "fused_add_rms_norm_us",
    "rotary_embedding_us",
    "silu_and_mul_us",
]


def median_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` on the GPU in milliseconds, by CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def paged_metadata(query_lens: list[int], seq_lens: list[int]) -> PagedAttentionMetadata:
    """A step whose sequences sit on shuffled blocks of one cache, metadata on the GPU."""
    blocks_per_seq = [-(-n // BLOCK_SIZE) for n in seq_lens]
    width = max(blocks_per_seq)
    order = torch.randperm(sum(blocks_per_seq), generator=torch.Generator().manual_seed(0))
    table = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    slots: list[torch.Tensor] = []
    used = 0
    for i, (count, query_len, seq_len) in enumerate(
        zip(blocks_per_seq, query_lens, seq_lens, strict=True)
    ):
        table[i, :count] = order[used : used + count]
        used += count
        positions = torch.arange(seq_len - query_len, seq_len)
        slots.append(table[i, positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE)
    starts = torch.tensor([0, *query_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return PagedAttentionMetadata(
        query_start_loc=starts.to(DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(DEVICE),
        block_table=table.to(DEVICE),
        slot_mapping=torch.cat(slots).to(DEVICE),
        query_lens_host=query_lens,
        seq_lens_host=seq_lens,
        block_size=BLOCK_SIZE,
    )


def new_cache(num_blocks: int) -> torch.Tensor:
    shape = (2, num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    return torch.randn(shape, dtype=DTYPE, device=DEVICE)


def bench_decode(warmup: int, repeats: int) -> dict[str, float]:
    meta = paged_metadata([1] * DECODE_BATCH, [DECODE_CONTEXT] * DECODE_BATCH)
    cache = new_cache(int(meta.block_table.max()) + 1)
    query = torch.randn(DECODE_BATCH, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    ms = median_ms(lambda: ops.paged_attention(query, cache, meta, HEAD_DIM**-0.5), warmup, repeats)
    kv_bytes = 2 * DECODE_BATCH * DECODE_CONTEXT * KV_HEADS * HEAD_DIM * cache.element_size()
    moved = kv_bytes + 2 * query.numel() * query.element_size()
    return {
        "decode_attn_us": ms * 1e3,
        "decode_attn_hbm_frac": moved / (ms * 1e-3) / HBM_BYTES_PER_S,
    }


def bench_prefill(warmup: int, repeats: int) -> dict[str, float]:
    seq_len = PREFILL_PREFIX + PREFILL_CHUNK
    meta = paged_metadata([PREFILL_CHUNK] * PREFILL_SEQS, [seq_len] * PREFILL_SEQS)
    cache = new_cache(int(meta.block_table.max()) + 1)
    query = torch.randn(PREFILL_SEQS * PREFILL_CHUNK, HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    ms = median_ms(lambda: ops.paged_attention(query, cache, meta, HEAD_DIM**-0.5), warmup, repeats)
    # Query j of a chunk sees PREFILL_PREFIX + j + 1 keys; 4 flops per (query, key, dim, head).
    visible = PREFILL_SEQS * sum(PREFILL_PREFIX + j + 1 for j in range(PREFILL_CHUNK))
    flops = 4 * visible * HEAD_DIM * HEADS
    return {"prefill_attn_us": ms * 1e3, "prefill_attn_tflops": flops / (ms * 1e-3) / 1e12}


def bench_block_copy(warmup: int, repeats: int) -> dict[str, float]:
    num_moved = GATHER_TOKENS // BLOCK_SIZE
    caches = [new_cache(4 * num_moved) for _ in range(LAYERS)]
    # Every other block, shuffled: a sequence's blocks are rarely neighbours in the pool.
    ids = (torch.randperm(2 * num_moved)[:num_moved] * 2).to(DEVICE)
    buffers = [ops.gather_blocks(cache, ids) for cache in caches]
    total = sum(b.numel() * b.element_size() for b in buffers)

    def gather() -> None:
        for cache in caches:
            ops.gather_blocks(cache, ids)

    def scatter() -> None:
        for buffer, cache in zip(buffers, caches, strict=True):
            ops.scatter_blocks(buffer, cache, ids)

    gather_ms = median_ms(gather, warmup, repeats)
    scatter_ms = median_ms(scatter, warmup, repeats)
    return {
        "block_gather_gbs": total / (gather_ms * 1e-3) / 1e9,
        "block_scatter_gbs": total / (scatter_ms * 1e-3) / 1e9,
    }


def bench_small_kernels(warmup: int, repeats: int) -> dict[str, float]:
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, dtype=DTYPE, device=DEVICE)

    x, residual, weight = randn(ROWS, HIDDEN), randn(ROWS, HIDDEN), randn(HIDDEN)
    query = randn(ROWS, HEADS, HEAD_DIM)
    key, value = randn(ROWS, KV_HEADS, HEAD_DIM), randn(ROWS, KV_HEADS, HEAD_DIM)
    positions = torch.arange(ROWS, device=DEVICE)
    cos_sin = torch.randn(8192, HEAD_DIM, device=DEVICE)
    cache = new_cache(ROWS // BLOCK_SIZE + 1)
    slots = torch.randperm(ROWS, device=DEVICE)
    gate_up = randn(ROWS, 2 * INTERMEDIATE)
    runs: dict[str, Callable[[], Any]] = {
        "store_kv_us": lambda: ops.store_kv(key, value, cache, slots),
        "rms_norm_us": lambda: ops.rms_norm(x, weight, 1e-5),
        "fused_add_rms_norm_us": lambda: ops.fused_add_rms_norm(x, residual, weight, 1e-5),
        "rotary_embedding_us": lambda: ops.rotary_embedding(positions, query, key, cos_sin),
        "silu_and_mul_us": lambda: ops.silu_and_mul(gate_up),
    }
    return {name: median_ms(fn, warmup, repeats) * 1e3 for name, fn in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    figures: dict[str, Any] = dict.fromkeys(KEYS)
    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        print("no GPU present (or Triton missing): kernel figures are null")
        print(json.dumps({**figures, "gpu": None}))
        return
    warmup, repeats = (3, 10) if args.quick else (10, 50)
    torch.manual_seed(0)
    for bench in (bench_decode, bench_prefill, bench_block_copy, bench_small_kernels):
        result = bench(warmup, repeats)
        for name, value in result.items():
            print(f"{name:>24}: {value:10.3f}")
        figures.update({name: round(value, 4) for name, value in result.items()})
        torch.cuda.empty_cache()
    figures["gpu"] = torch.cuda.get_device_name()
    figures["hbm_peak_bytes_per_s"] = HBM_BYTES_PER_S
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
