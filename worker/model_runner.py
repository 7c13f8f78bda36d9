"""A rank's share of a step: build tensors, run its pipeline stage, sample on the last stage."""

from __future__ import annotations

import torch
import torch.distributed as dist

from kernels import PagedAttentionMetadata, ops
from worker.compiled_decode import CompiledDecode
from worker.cuda_graphs import DecodeGraphs
from worker.model.llama import LlamaForCausalLM
from worker.model.loader import torch_dtype
from worker.model_config import ModelConfig
from worker.parallel.comm import recv_intermediate, send_intermediate
from worker.parallel.state import ParallelState
from worker.sampler import SampledToken, Sampler
from worker.step_input import SamplingRow, StepInput

_SEED_MASK = (1 << 63) - 1  # torch seeds are unsigned 64-bit; Python hashes of ints are stable


class ModelRunner:
    """Owns this rank's model shard and its paged KV cache, one tensor per local layer:
    [2 (key, value), num_blocks, block_size, local_kv_heads, head_dim]. The first TP rank of the
    last stage samples; the other ranks return None."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        parallel: ParallelState | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.parallel = parallel or ParallelState.single()
        self.block_size = block_size
        shape = (2, num_blocks, block_size, model.local_kv_heads, config.head_dim)
        device = self.parallel.device
        self.dtype = torch_dtype(config.dtype)
        # Zeroed, not empty: padded attention reads masked slots, and 0 * NaN would leak through.
        self.kv_caches = [
            torch.zeros(shape, dtype=self.dtype, device=device)
            for _ in range(model.num_local_layers)
        ]
        self.samples = self.parallel.is_last_stage and self.parallel.tp_rank == 0
        self.sampler = Sampler()
        self._pending_send: dist.Work | None = None
        self.graphs: DecodeGraphs | None = None
        self.compiled: CompiledDecode | None = None
        # The previous step's sampling rows and tokens: a step built before they were known
        # reads its inputs from them (StepInput.pending_inputs).
        self._previous: tuple[list[SamplingRow], list[SampledToken]] = ([], [])

    def compile_decode(self, max_model_len: int, max_batch: int) -> float:
        """Compile the forward of decode steps of at most ``max_batch`` sequences (see
        worker/compiled_decode.py); later such steps run it, and CUDA graphs captured after
        this record it. Single-rank replicas only. Returns the seconds compilation took;
        raises what it raised, leaving the runner eager."""
        if self.parallel.config.world_size != 1:
            raise ValueError("compiled steps need a single-rank replica")
        compiled = CompiledDecode(
            self.model, self.kv_caches, self.block_size, max_model_len, max_batch,
            self.parallel.device,
        )  # fmt: skip
        compiled.warm_up()
        self.compiled = compiled
        return compiled.compile_s

    def capture_decode_graphs(self, max_model_len: int, max_batch: int) -> None:
        """Record CUDA graphs of decode steps (see worker/cuda_graphs.py); later decode steps of
        at most ``max_batch`` sequences replay them. Single-rank replicas on a GPU only."""
        if self.parallel.device.type != "cuda" or self.parallel.config.world_size != 1:
            raise ValueError("CUDA graphs need a single-rank replica on a CUDA device")
        graphs = DecodeGraphs(
            self.model, self.kv_caches, self.block_size, max_model_len, max_batch,
            self.parallel.device, self.compiled,
        )  # fmt: skip
        graphs.capture()
        self.graphs = graphs

    @torch.inference_mode()
    def execute(self, step: StepInput) -> list[SampledToken] | None:
        if step.block_copies:
            self._copy_blocks(step.block_copies)
        if step.pending_inputs:
            rows, tokens = self._previous
            token_of = {row.request_id: t.token_id for row, t in zip(rows, tokens, strict=True)}
            for index, request_id in step.pending_inputs:
                step.input_ids[index] = token_of[request_id]
        sampled = self._execute(step)
        if sampled is not None:
            self._previous = (step.sampling, sampled)
        return sampled

    def _copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: each (source, destination) block, in every local layer's cache, with
        the kernels' block gather and scatter (Triton on a GPU, torch on a CPU)."""
        device = self.parallel.device
        sources = torch.tensor([s for s, _ in copies], dtype=torch.int64, device=device)
        destinations = torch.tensor([d for _, d in copies], dtype=torch.int64, device=device)
        for cache in self.kv_caches:
            ops.scatter_blocks(ops.gather_blocks(cache, sources), cache, destinations)

    def _execute(self, step: StepInput) -> list[SampledToken] | None:
        device = self.parallel.device
        graphs = self.graphs
        bucket = graphs.bucket_for(step) if graphs is not None else None
        if graphs is not None and bucket is not None:
            return self._sample(graphs.replay(step, bucket), step)
        if self.compiled is not None and self.compiled.accepts(step):
            return self._sample(self.compiled.run(step), step)
        meta = PagedAttentionMetadata(
            query_start_loc=torch.tensor(step.query_start_loc, dtype=torch.int32, device=device),
            seq_lens=torch.tensor(step.seq_lens, dtype=torch.int32, device=device),
            block_table=torch.tensor(step.block_table, dtype=torch.int32, device=device),
            slot_mapping=torch.tensor(step.slot_mapping, dtype=torch.int64, device=device),
            query_lens_host=step.query_lens,
            seq_lens_host=step.seq_lens,
            block_size=self.block_size,
        )
        intermediate = None
        if not self.parallel.is_first_stage:
            intermediate = recv_intermediate(
                len(step.input_ids), self.config.hidden_size, self.dtype, self.parallel
            )
        out = self.model(
            torch.tensor(step.input_ids, dtype=torch.int64, device=device),
            torch.tensor(step.positions, dtype=torch.int64, device=device),
            self.kv_caches,
            meta,
            intermediate,
        )
        if not self.parallel.is_last_stage:
            assert isinstance(out, tuple)
            hidden, residual = out
            if self._pending_send is not None:
                self._pending_send.wait()  # surfaces a failed send of the previous step
            self._pending_send = send_intermediate(hidden, residual, self.parallel)
            return None
        assert isinstance(out, torch.Tensor)
        return self._sample(out, step)

    def _sample(self, out: torch.Tensor, step: StepInput) -> list[SampledToken] | None:
        device = self.parallel.device
        if not step.sampling:  # only prefill chunks that do not reach their prompt's end
            return [] if self.samples else None
        rows = torch.tensor(step.logits_rows, dtype=torch.int64, device=device)
        logits = self.model.compute_logits(out[rows])  # every TP rank joins its all-gather
        if not self.samples:
            return None
        return self.sampler.sample(
            logits.cpu(), [row.params for row in step.sampling], self._generators_for(step)
        )

    @staticmethod
    def _generators_for(step: StepInput) -> list[torch.Generator | None]:
        """A seeded row's noise depends on its seed and the position it samples, nothing else:
        not the batch, and not how often the request was preempted and its position re-sampled.
        """
        return [
            None
            if row.params.seed is None
            else torch.Generator().manual_seed(hash((row.params.seed, row.position)) & _SEED_MASK)
            for row in step.sampling
        ]
