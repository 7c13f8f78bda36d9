"""One step's batch as the driver sends it to every rank: plain lists, cheap to pickle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from worker.sampling_params import SamplingParams
from worker.scheduler import SchedulerOutput


@dataclass(frozen=True, slots=True)
class SamplingRow:
    """A request whose next token this step picks, at ``position`` of its sequence; with
    ``num_drafts`` drafts to verify (worker/spec_decode.py), its last ``num_drafts + 1`` input
    rows are sampled, at ``position``, ``position + 1``, ..."""

    request_id: str
    params: SamplingParams
    position: int
    num_drafts: int = 0


@dataclass(slots=True)
class StepInput:
    """The flattened batch (see kernels.PagedAttentionMetadata for the layout) and the rows to
    sample."""

    input_ids: list[int]
    positions: list[int]
    slot_mapping: list[int]
    query_start_loc: list[int]
    query_lens: list[int]
    seq_lens: list[int]
    block_table: list[list[int]]  # padded to one width with block 0
    logits_rows: list[int]  # a row's, or with drafts each of its verified positions'
    sampling: list[SamplingRow]
    # Rows whose input is the token the previous step sampled for this request, not known
    # when the step was built (a scheduler running ahead); the runner fills them in.
    pending_inputs: list[tuple[int, str]]
    # (source, destination) block ids each rank copies in its cache before the forward pass:
    # copy-on-write of a block that forked sequences share (KVCacheManager.fork).
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    # Per sequence, how many of its last input rows are drafts to verify, and the token before
    # its first input (a draft model recomputes it: worker/draft_model.py); empty when none is.
    draft_counts: list[int] = field(default_factory=list)
    draft_previous: list[int] = field(default_factory=list)


def build_step_input(
    batch: SchedulerOutput,
    block_ids_of: Callable[[str], list[int]],
    block_size: int,
    block_copies: list[tuple[int, int]] | None = None,
) -> StepInput:
    bs = block_size
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_start = [0]
    seq_lens: list[int] = []
    tables: list[list[int]] = []
    logits_rows: list[int] = []
    sampling: list[SamplingRow] = []
    pending: list[tuple[int, str]] = []
    for item in batch.scheduled:
        request = item.request
        start, end = item.start, item.start + item.num_new_tokens
        block_ids = block_ids_of(request.request_id)
        input_ids += request.all_token_ids[start:end]
        if item.num_drafts:
            input_ids += request.draft_token_ids[: item.num_drafts]
        elif end > request.num_tokens:  # only ever the last one: a sample still in flight
            pending.append((len(input_ids), request.request_id))
            input_ids.append(-1)
        positions += range(start, end)
        if end - start == 1:
            slots.append(block_ids[start // bs] * bs + start % bs)
        else:
            slots += [block_ids[p // bs] * bs + p % bs for p in range(start, end)]
        query_start.append(len(input_ids))
        seq_lens.append(end)
        tables.append(block_ids)
        if item.samples:
            first = len(input_ids) - 1 - item.num_drafts
            logits_rows += range(first, len(input_ids))
            position = end - item.num_drafts
            sampling.append(
                SamplingRow(request.request_id, request.params, position, item.num_drafts)
            )
    drafts = [item.num_drafts for item in batch.scheduled]
    width = max(len(t) for t in tables)
    return StepInput(
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slots,
        query_start_loc=query_start,
        query_lens=[s.num_new_tokens for s in batch.scheduled],
        seq_lens=seq_lens,
        block_table=[t + [0] * (width - len(t)) for t in tables],
        logits_rows=logits_rows,
        sampling=sampling,
        pending_inputs=pending,
        block_copies=block_copies or [],
        draft_counts=drafts if any(drafts) else [],
        draft_previous=[
            s.request.all_token_ids[s.start - 1] if s.num_drafts else -1 for s in batch.scheduled
        ]
        if any(drafts)
        else [],
    )
