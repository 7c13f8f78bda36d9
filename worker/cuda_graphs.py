"""CUDA graphs of the model's forward for decode-only steps, captured at start-up.

A decode step launches a few hundred small kernels whose CPU-side launch cost dominates at small
batches. A graph replays them in one launch, but only over fixed shapes and fixed addresses, so:

- one graph per batch-size bucket (1, 2, 4, 8, then multiples of 8 up to ``max_batch``); a step
  of n sequences runs the smallest bucket >= n, rows n.. being padding;
- every input lives in a static buffer that each step overwrites in place: token ids,
  positions, slot mapping (-1 on padding rows: they store nothing), sequence lengths (1 on
  padding rows), the block table at its widest (``max_model_len`` blocks; padding points at
  block 0, which padding rows only read);
- attention's launch sizes come from host-side lengths, which a graph freezes: captured with
  every sequence at ``max_model_len``, the decode kernel's split count is the one for the
  longest context, and its programs read the true lengths from the device tensor at replay
  (splits past a sequence's end exit at once).

When the decode forward is compiled (worker/compiled_decode.py), the graphs record the compiled
forward instead of the eager one. Only single-rank replicas are captured: collectives over gloo
cannot be, and NCCL's need their own care. Steps with any prefill row, or more sequences than
``max_batch``, run eagerly.
"""

from __future__ import annotations

import torch

from kernels import PagedAttentionMetadata
from worker.compiled_decode import CompiledDecode
from worker.model.llama import LlamaForCausalLM
from worker.step_input import StepInput


def batch_buckets(max_batch: int) -> list[int]:
    """The captured batch sizes: 1, 2, 4, 8, 16, 24, ... up to ``max_batch`` (included)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    sizes = [s for s in (1, 2, 4) if s < max_batch] + list(range(8, max_batch, 8))
    return [*sizes, max_batch]


class DecodeGraphs:
    """Static input buffers, one captured graph per bucket, and the step → buffers copy."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[torch.Tensor],
        block_size: int,
        max_model_len: int,
        max_batch: int,
        device: torch.device,
        compiled: CompiledDecode | None = None,
    ) -> None:
        self.model = model
        self.compiled = compiled
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.buckets = batch_buckets(max_batch)
        self.max_blocks = -(-max_model_len // block_size)
        n = self.buckets[-1]
        i32, i64 = torch.int32, torch.int64
        self.input_ids = torch.zeros(n, dtype=i64, device=device)
        self.positions = torch.zeros(n, dtype=i64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=i64, device=device)
        self.seq_lens = torch.ones(n, dtype=i32, device=device)
        self.block_table = torch.zeros((n, self.max_blocks), dtype=i32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=i32, device=device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def bucket_for(self, step: StepInput) -> int | None:
        """The bucket a step runs in, or None if it must run eagerly."""
        n = len(step.query_lens)
        if n == 0 or n > self.buckets[-1] or any(q != 1 for q in step.query_lens):
            return None
        if step.block_table and len(step.block_table[0]) > self.max_blocks:
            return None
        return next(b for b in self.buckets if b >= n)

    def load(self, step: StepInput, bucket: int) -> None:
        """Copy the step into the buffers' first ``bucket`` rows, padding after its own."""
        n, width = len(step.query_lens), len(step.block_table[0])

        def put(buffer: torch.Tensor, values: list[int], pad: int) -> None:
            buffer[:n].copy_(torch.tensor(values, dtype=buffer.dtype))
            buffer[n:bucket].fill_(pad)

        put(self.input_ids, step.input_ids, 0)
        put(self.positions, step.positions, 0)
        put(self.slot_mapping, step.slot_mapping, -1)
        put(self.seq_lens, step.seq_lens, 1)
        self.block_table[:n, :width].copy_(torch.tensor(step.block_table, dtype=torch.int32))
        self.block_table[:n, width:].zero_()
        self.block_table[n:bucket].zero_()

    def metadata(self, bucket: int, seq_lens_host: list[int]) -> PagedAttentionMetadata:
        """Attention metadata over the buffers' first ``bucket`` rows."""
        return PagedAttentionMetadata(
            query_start_loc=self.query_start_loc[: bucket + 1],
            seq_lens=self.seq_lens[:bucket],
            block_table=self.block_table[:bucket],
            slot_mapping=self.slot_mapping[:bucket],
            query_lens_host=[1] * bucket,
            seq_lens_host=seq_lens_host,
            block_size=self.block_size,
        )

    def forward(self, bucket: int, seq_lens_host: list[int]) -> torch.Tensor:
        """The model over the buffers (compiled if it was, else eagerly): what a graph
        records, and the CPU check of the padding."""
        if self.compiled is not None:
            return self.compiled.compiled_forward(
                self.input_ids[:bucket],
                self.positions[:bucket],
                self.slot_mapping[:bucket],
                self.seq_lens[:bucket],
                self.block_table[:bucket],
            )
        out = self.model(
            self.input_ids[:bucket],
            self.positions[:bucket],
            self.kv_caches,
            self.metadata(bucket, seq_lens_host),
        )
        assert isinstance(out, torch.Tensor), "graphs are for single-stage replicas"
        return out

    @torch.inference_mode()
    def capture(self) -> None:
        """Record every bucket's graph, largest first so smaller ones reuse its memory pool.
        Each bucket runs eagerly once first: Triton compiles its kernels outside the capture.
        The buffers hold padding meanwhile, so the KV cache is not written."""
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        for bucket in reversed(self.buckets):
            capacity = [self.max_model_len] * bucket
            with torch.cuda.stream(stream):
                self.forward(bucket, capacity)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.forward(bucket, capacity)
            pool = graph.pool()
            self._graphs[bucket] = (graph, out)
        torch.cuda.synchronize()

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    def replay(self, step: StepInput, bucket: int) -> torch.Tensor:
        """The step's hidden states [n, hidden], from the bucket's graph."""
        self.load(step, bucket)
        graph, out = self._graphs[bucket]
        graph.replay()
        return out[: len(step.query_lens)]
