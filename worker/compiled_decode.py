"""torch.compile (Inductor) of the model's forward for decode-only steps.

Inductor fuses the elementwise work between the matmuls (norms, rotary, the gated activation,
residual adds) and takes the per-module Python out of the step, which is most of a small
batch's time on a CPU. Two kernels it cannot trace (the paged cache write and attention) are
opaque custom operators (kernels/compiled_ops.py), so each forward is one graph.

Compilations are bounded: at start-up, exactly two graphs are compiled and no step compiles
another:

- one for every batch of 2 to ``max_batch`` sequences, the batch size symbolic (no padding
  rows to compute), and one for a single sequence (torch specializes sizes 0 and 1);
- the block table is padded to the widest a sequence can need (``max_model_len`` blocks), so
  its shape never changes; attention bounds each sequence's reads by its own length.

Inductor's caches live in ``TORCHINDUCTOR_CACHE_DIR`` (default ``~/.cache/kvfleet/inductor``),
so a restart loads the compiled code instead of compiling it again. On a GPU the CUDA graphs
(worker/cuda_graphs.py) record this compiled forward, one graph per batch bucket. Steps with a
prefill row, or more than ``max_batch`` sequences, run eagerly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from kernels import DecodeMetadata
from worker.model.llama import LlamaForCausalLM
from worker.step_input import StepInput

_DEFAULT_CACHE = Path.home() / ".cache" / "kvfleet" / "inductor"


class CompiledDecode:
    """The compiled forward and the step → tensors conversion for it."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_model_len: int,
        max_batch: int,
        device: torch.device,
    ) -> None:
        if max_batch < 2:
            raise ValueError(f"max_batch must be at least 2, got {max_batch}")
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.max_batch = max_batch
        self.max_blocks = -(-max_model_len // block_size)
        self.device = device
        self.compile_s = 0.0
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_DEFAULT_CACHE))
        self._compiled = torch.compile(self.forward, dynamic=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        seq_lens: torch.Tensor,
        block_table: torch.Tensor,
    ) -> torch.Tensor:
        """The model over a decode-only batch, eagerly: what is compiled."""
        num_seqs = input_ids.shape[0]
        meta = DecodeMetadata(
            query_start_loc=torch.arange(num_seqs + 1, dtype=torch.int32, device=self.device),
            seq_lens=seq_lens,
            block_table=block_table,
            slot_mapping=slot_mapping,
            max_seq_len=self.max_model_len,
            block_size=self.block_size,
        )
        out = self.model(input_ids, positions, self.kv_caches, meta)
        assert isinstance(out, torch.Tensor), "compiled steps are for single-stage replicas"
        return out

    def accepts(self, step: StepInput) -> bool:
        """Whether the step runs compiled (else eagerly)."""
        n = len(step.query_lens)
        return 0 < n <= self.max_batch and all(q == 1 for q in step.query_lens)

    def run(self, step: StepInput) -> torch.Tensor:
        """The step's hidden states [n, hidden] from the compiled forward."""
        device, n = self.device, len(step.query_lens)
        table = torch.zeros((n, self.max_blocks), dtype=torch.int32)
        width = len(step.block_table[0])
        table[:, :width] = torch.tensor(step.block_table, dtype=torch.int32)
        return self._compiled(
            torch.tensor(step.input_ids, dtype=torch.int64, device=device),
            torch.tensor(step.positions, dtype=torch.int64, device=device),
            torch.tensor(step.slot_mapping, dtype=torch.int64, device=device),
            torch.tensor(step.seq_lens, dtype=torch.int32, device=device),
            table.to(device),
        )

    def compiled_forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The compiled forward over tensors laid out as ``forward`` takes them (the CUDA
        graphs' static buffers)."""
        return self._compiled(*inputs)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile both graphs now, over padding rows that store nothing (slot -1), so that
        no serving step waits for a compilation. Raises whatever compilation raises."""
        started = time.perf_counter()
        for n in (2, 1):
            inputs = self._padding(n)
            if n > 1:
                # "maybe": a cached graph found for a narrower range narrows it (a larger batch
                # then compiles a third graph) rather than failing the compilation.
                for tensor in inputs:
                    torch._dynamo.maybe_mark_dynamic(tensor, 0)
            self._compiled(*inputs)
        self.compile_s = time.perf_counter() - started

    def _padding(self, n: int) -> tuple[torch.Tensor, ...]:
        def full(size: int, value: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((size,), value, dtype=dtype, device=self.device)

        return (
            full(n, 0, torch.int64),
            full(n, 0, torch.int64),
            full(n, -1, torch.int64),
            full(n, 1, torch.int32),
            torch.zeros((n, self.max_blocks), dtype=torch.int32, device=self.device),
        )
