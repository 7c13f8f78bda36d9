"""A small draft model beside the target, on the sampling rank of a single-rank replica:
it proposes the drafts each step verifies (worker/spec_decode.py).

The draft's KV cache has the target's block layout and uses the target's block tables, so it
needs no allocator of its own: every token the target computes, the draft computes at the same
slot, first thing in the step, and a block found in the prefix cache holds the draft's keys
for it too. Then it drafts greedily, one pass per draft, writing the drafts' KV into slots the
scheduler already gave the request for the target to verify them:

    target step      x  d1 d2 d3         (x: the last token; d: drafts, filled in here)
    draft pass 1     the step's tokens without drafts (prompt chunks too), and the token
                     before x -> d1 after x
    draft pass 2     d1 at x's position + 1 -> d2
    draft pass 3     d2 -> d3

A rejected draft's KV is overwritten by the step that computes the token at its position; the
context lengths keep it unread until then. Blocks pulled from another replica (disaggregated
serving) hold no draft KV, so a decode replica's drafts on pulled prompts are poor: still
verified, never wrong, only rarely accepted.
"""

from __future__ import annotations

from itertools import pairwise

import torch

from worker.model.llama import LlamaForCausalLM
from worker.step_input import StepInput
from worker.step_tensors import attention_metadata, token_tensors


class DraftModel:
    """The draft model and its KV cache (one tensor per layer, the target's block layout)."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.device = device
        shape = (2, num_blocks, block_size, model.local_kv_heads, model.config.head_dim)
        self.kv_caches = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(model.num_local_layers)
        ]

    @torch.inference_mode()
    def propose(self, step: StepInput) -> None:
        """Compute the step's tokens into the draft cache, then fill each sequence's draft
        rows of ``step.input_ids`` (``step.draft_counts``) with the draft's greedy tokens."""
        counts = step.draft_counts or [0] * len(step.query_lens)
        drafting = [i for i, count in enumerate(counts) if count]
        sync = _without_drafts(step, counts, self.block_size)
        rows = [sync.query_start_loc[i + 1] - 1 for i in drafting]
        tokens = self._greedy(sync, rows)
        # Row of sequence i's last input token (x) in the step; draft j goes j rows after it.
        x_rows = [step.query_start_loc[i + 1] - counts[i] - 1 for i in drafting]
        for j in range(1, max(counts, default=0) + 1):
            live = [n for n, i in enumerate(drafting) if counts[i] >= j]
            for n, token in zip(live, tokens, strict=True):
                step.input_ids[x_rows[n] + j] = token
            deeper = [n for n in live if counts[drafting[n]] > j]
            if not deeper:
                break
            tokens = self._greedy(
                _decode_step(step, [drafting[n] for n in deeper], [x_rows[n] + j for n in deeper]),
                list(range(len(deeper))),
            )

    def _greedy(self, step: StepInput, rows: list[int]) -> list[int]:
        """Run the draft over ``step``, writing its KV; the argmax token after each of ``rows``."""
        ids, positions = token_tensors(step, self.device)
        meta = attention_metadata(step, self.block_size, self.device)
        hidden = self.model(ids, positions, self.kv_caches, meta)
        assert isinstance(hidden, torch.Tensor)  # a single-stage model
        if not rows:
            return []
        index = torch.tensor(rows, dtype=torch.int64, device=self.device)
        tokens: list[int] = self.model.compute_logits(hidden[index]).argmax(dim=-1).tolist()
        return tokens


def _without_drafts(step: StepInput, counts: list[int], block_size: int) -> StepInput:
    """``step`` with each sequence's draft rows cut off its end, and a drafting sequence's
    previous token put back at its start: when the last step accepted all its drafts, the last
    of them was never an input of the draft model, so its KV is missing there."""
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    starts = [0]
    for i, count in enumerate(counts):
        first = step.query_start_loc[i]
        if count:
            position = step.positions[first] - 1
            block = step.block_table[i][position // block_size]
            ids.append(step.draft_previous[i])
            positions.append(position)
            slots.append(block * block_size + position % block_size)
        rows = range(first, step.query_start_loc[i + 1] - count)
        ids += [step.input_ids[r] for r in rows]
        positions += [step.positions[r] for r in rows]
        slots += [step.slot_mapping[r] for r in rows]
        starts.append(len(ids))
    return StepInput(
        input_ids=ids,
        positions=positions,
        slot_mapping=slots,
        query_start_loc=starts,
        query_lens=[b - a for a, b in pairwise(starts)],
        seq_lens=[s - c for s, c in zip(step.seq_lens, counts, strict=True)],
        block_table=step.block_table,
        logits_rows=[],
        sampling=[],
        pending_inputs=[],
    )


def _decode_step(step: StepInput, seqs: list[int], rows: list[int]) -> StepInput:
    """One token per sequence ``seqs[n]``: the input at ``rows[n]`` of ``step``, at its
    position and slot, attending to everything before it."""
    positions = [step.positions[r] for r in rows]
    return StepInput(
        input_ids=[step.input_ids[r] for r in rows],
        positions=positions,
        slot_mapping=[step.slot_mapping[r] for r in rows],
        query_start_loc=list(range(len(rows) + 1)),
        query_lens=[1] * len(rows),
        seq_lens=[p + 1 for p in positions],
        block_table=[step.block_table[i] for i in seqs],
        logits_rows=[],
        sampling=[],
        pending_inputs=[],
    )
