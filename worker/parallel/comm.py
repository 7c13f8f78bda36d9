"""The collectives the model runs: TP all-reduce and all-gather, and the pipeline hand-off.

Each is a no-op when its group has one rank, so the tp = pp = 1 path never touches
torch.distributed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from worker.parallel.state import ParallelState, RankGroup


def tp_all_reduce(x: torch.Tensor, state: ParallelState) -> torch.Tensor:
    """Sum ``x`` over the tensor-parallel group, in place; returns ``x``."""
    if state.tp_size == 1:
        return x
    dist.all_reduce(x, group=_group(state.tp_group, "tensor-parallel").device)
    return x


def tp_all_gather(x: torch.Tensor, state: ParallelState) -> torch.Tensor:
    """Concatenate every TP rank's ``x`` along the last dimension, in tp_rank order."""
    if state.tp_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(state.tp_size)]
    dist.all_gather(parts, x, group=_group(state.tp_group, "tensor-parallel").device)
    return torch.cat(parts, dim=-1)


def send_intermediate(
    hidden: torch.Tensor, residual: torch.Tensor, state: ParallelState
) -> dist.Work | None:
    """Start sending this stage's output ``(hidden, residual)``, each [T, hidden_size], to the
    same tp_rank of the next stage; returns the pending send, or None on the last stage (so
    always for pp = 1), which sends nothing.

    The send does not wait: gloo completes it only once the next stage posts the matching
    ``recv_intermediate``, and a stage that blocked until then could not join a collective that
    the next stage runs first (sampled tokens coming back for an earlier micro-batch, say).
    ``hidden`` and ``residual`` are copied and may be reused at once; ``wait()`` on the result
    (before the next send, for instance) to surface a failed send. Every TP rank of a stage
    holds the same output and sends its own copy, so each pair of stages is a plain
    point-to-point link.
    """
    if state.is_last_stage:
        return None
    group = _group(state.pp_group, "pipeline")
    # One message, not two: the receiver knows the shape from the step it is running.
    message = torch.stack((hidden, residual))
    return dist.isend(message, dst=state.next_stage_rank, group=group.device)


def recv_intermediate(
    num_tokens: int, hidden_size: int, dtype: torch.dtype, state: ParallelState
) -> tuple[torch.Tensor, torch.Tensor]:
    """Receive the previous stage's ``(hidden, residual)``, each [num_tokens, hidden_size] of
    ``dtype`` on ``state.device``; the first stage has nothing to receive."""
    if state.is_first_stage:
        raise ValueError("the first pipeline stage has no previous stage to receive from")
    group = _group(state.pp_group, "pipeline")
    buffer = torch.empty((2, num_tokens, hidden_size), dtype=dtype, device=state.device)
    dist.recv(buffer, src=state.prev_stage_rank, group=group.device)
    return buffer[0], buffer[1]


def _group(group: RankGroup | None, kind: str) -> RankGroup:
    if group is None:
        raise RuntimeError(
            f"this ParallelState has no {kind} process group: build it with init_parallel"
        )
    return group
