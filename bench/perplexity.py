"""Perplexity of a loaded model (quantized or not, with any KV cache dtype) on a text: one
prefill over the whole text through the engine's own runner and paged KV cache, every position's
next-token log-probability from its logits. ``HELDOUT`` is a text written for this and used
nowhere else (not in the demo tokenizer's corpus)."""

from __future__ import annotations

from pathlib import Path

import torch

from worker.model.llama import LlamaForCausalLM
from worker.model_runner import ModelRunner
from worker.step_input import StepInput
from worker.step_tensors import attention_metadata, token_tensors

HELDOUT = Path(__file__).resolve().parent / "data" / "heldout.txt"
_BLOCK_SIZE = 16


@torch.inference_mode()
def perplexity(
    model: LlamaForCausalLM, token_ids: list[int], kv_cache_dtype: str = "auto"
) -> float:
    """exp of the mean negative log-likelihood of ``token_ids[1:]``, each given those before."""
    count = len(token_ids)
    num_blocks = -(-count // _BLOCK_SIZE)
    runner = ModelRunner(
        model, model.config, num_blocks + 1, _BLOCK_SIZE, kv_cache_dtype=kv_cache_dtype
    )
    blocks = list(range(1, num_blocks + 1))  # block 0 stays the padding block
    step = StepInput(
        input_ids=token_ids,
        positions=list(range(count)),
        slot_mapping=[
            blocks[p // _BLOCK_SIZE] * _BLOCK_SIZE + p % _BLOCK_SIZE for p in range(count)
        ],
        query_start_loc=[0, count],
        query_lens=[count],
        seq_lens=[count],
        block_table=[blocks],
        logits_rows=[],
        sampling=[],
        pending_inputs=[],
    )
    device = runner.parallel.device
    ids, positions = token_tensors(step, device)
    hidden = model(ids, positions, runner.kv_caches, attention_metadata(step, _BLOCK_SIZE, device))
    assert isinstance(hidden, torch.Tensor)  # a single-stage model
    logits = model.compute_logits(hidden[:-1])
    nll = torch.nn.functional.cross_entropy(logits.float(), ids[1:])
    return float(nll.exp())
