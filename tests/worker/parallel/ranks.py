"""Running a model split over real processes (gloo on CPU), the way an executor drives it.

The parent starts a TCPStore and spawns the processes once; each runs every case in turn,
joining a fresh set of process groups per case (ranks beyond a case's world size sit it out).
Each case is a batch of prompts prefilled in one step then greedily decoded, one token per
sequence per step, through the paged KV cache of every rank. This module imports no
transformers: it is what each spawned process imports.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.worker.model.paging import BLOCK_SIZE, PagedSequence, build_step, shuffled_block_ids
from worker.model import LlamaForCausalLM, ModelConfig, load_model, torch_dtype
from worker.parallel import (
    ParallelConfig,
    ParallelState,
    init_parallel,
    recv_intermediate,
    send_intermediate,
)

NUM_BLOCKS = 16
BLOCKS_PER_SEQUENCE = 4
TIMEOUT = datetime.timedelta(seconds=60)


@dataclass(frozen=True)
class Case:
    """One layout of one checkpoint, its linear layers perhaps quantized as they load."""

    name: str
    checkpoint: Path
    parallel: ParallelConfig
    quantization: str | None = None


@dataclass(frozen=True)
class Generation:
    """What one rank saw: the greedy tokens of each sequence, and (last stage only) the
    float32 logits [steps, num_sequences, vocab] they were picked from."""

    tokens: list[list[int]]
    logits: torch.Tensor | None
    param_bytes: int
    layer_range: range
    local_kv_heads: int


def generate(
    model: LlamaForCausalLM, state: ParallelState, prompts: list[list[int]], num_decode_steps: int
) -> Generation:
    """Prefill every prompt in one step, then decode ``num_decode_steps`` steps. The last stage's
    tp rank 0 picks each greedy token and broadcasts it to every rank on the gloo group."""
    config = model.config
    kv_shape = (2, NUM_BLOCKS, BLOCK_SIZE, model.local_kv_heads, config.head_dim)
    kv_caches = [
        torch.zeros(kv_shape, dtype=torch_dtype(config.dtype))
        for _ in range(model.num_local_layers)
    ]
    blocks = shuffled_block_ids(NUM_BLOCKS)
    sequences = [
        PagedSequence(blocks[i * BLOCKS_PER_SEQUENCE : (i + 1) * BLOCKS_PER_SEQUENCE])
        for i in range(len(prompts))
    ]
    tokens = [list(prompt) for prompt in prompts]
    step_tokens = [list(prompt) for prompt in prompts]
    sampling_rank = state.config.rank_of(state.pp_size - 1, 0)
    logits_per_step = []
    for _ in range(num_decode_steps + 1):
        positions, meta = build_step(
            [(seq, len(t)) for seq, t in zip(sequences, step_tokens, strict=True)]
        )
        input_ids = torch.tensor([t for ts in step_tokens for t in ts], dtype=torch.long)
        intermediate = None
        if not model.is_first_stage:
            intermediate = recv_intermediate(
                len(input_ids), config.hidden_size, torch_dtype(config.dtype), state
            )
        with torch.inference_mode():
            out = model(input_ids, positions, kv_caches, meta, intermediate)
        picked = torch.zeros(len(prompts), dtype=torch.long)
        sending = None
        if model.is_last_stage:
            last_rows = meta.query_start_loc[1:].long() - 1
            logits = model.compute_logits(out[last_rows])
            logits_per_step.append(logits)
            picked = logits.argmax(-1)
        else:
            sending = send_intermediate(*out, state)
        if state.world_group is not None:
            dist.broadcast(picked, src=sampling_rank, group=state.world_group.cpu)
        if sending is not None:
            sending.wait()
        step_tokens = [[int(t)] for t in picked]
        for seq_tokens, t in zip(tokens, picked.tolist(), strict=True):
            seq_tokens.append(t)
    return Generation(
        tokens=tokens,
        logits=torch.stack(logits_per_step) if logits_per_step else None,
        param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        layer_range=model.layer_range,
        local_kv_heads=model.local_kv_heads,
    )


def load_and_generate(
    case: Case, state: ParallelState, prompts: list[list[int]], num_decode_steps: int
) -> Generation:
    config = ModelConfig.from_dir(case.checkpoint)
    model = load_model(case.checkpoint, config, state, quantization=case.quantization)
    return generate(model, state, prompts, num_decode_steps)


def spawn_cases(
    cases: list[Case], prompts: list[list[int]], num_decode_steps: int, out_dir: Path
) -> dict[str, dict[int, Generation]]:
    """Run every case on real processes; returns each case's Generation per global rank."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    nprocs = max(case.parallel.world_size for case in cases)
    mp.spawn(
        _run_rank,
        args=(store.port, cases, prompts, num_decode_steps, out_dir),
        nprocs=nprocs,
        join=True,
    )
    return {
        case.name: {
            rank: torch.load(out_dir / f"{case.name}-{rank}.pt", weights_only=False)
            for rank in range(case.parallel.world_size)
        }
        for case in cases
    }


def _run_rank(
    rank: int,
    port: int,
    cases: list[Case],
    prompts: list[list[int]],
    num_decode_steps: int,
    out_dir: Path,
) -> None:
    # More threads than cores only adds contention between the ranks.
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=TIMEOUT)
    for i, case in enumerate(cases):
        if rank >= case.parallel.world_size:
            continue
        case_store = dist.PrefixStore(f"case{i}/", store)
        state = init_parallel(rank, case.parallel, case_store, "gloo", timeout=TIMEOUT)
        try:
            result = load_and_generate(case, state, prompts, num_decode_steps)
        finally:
            state.destroy()
        torch.save(result, out_dir / f"{case.name}-{rank}.pt")
