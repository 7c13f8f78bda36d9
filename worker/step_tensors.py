"""A step's plain lists as the tensors the model reads."""

from __future__ import annotations

import torch

from kernels import PagedAttentionMetadata
from worker.step_input import StepInput


def attention_metadata(
    step: StepInput, block_size: int, device: torch.device
) -> PagedAttentionMetadata:
    """The step's layout (its sequences' query rows, context lengths, block tables, slots)."""
    return PagedAttentionMetadata(
        query_start_loc=torch.tensor(step.query_start_loc, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(step.seq_lens, dtype=torch.int32, device=device),
        block_table=torch.tensor(step.block_table, dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(step.slot_mapping, dtype=torch.int64, device=device),
        query_lens_host=step.query_lens,
        seq_lens_host=step.seq_lens,
        block_size=block_size,
    )


def token_tensors(step: StepInput, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's input ids and positions."""
    return (
        torch.tensor(step.input_ids, dtype=torch.int64, device=device),
        torch.tensor(step.positions, dtype=torch.int64, device=device),
    )
