"""A rank's share of a step: build tensors, run its pipeline stage, sample on the last stage."""

from __future__ import annotations

import torch
import torch.distributed as dist

from kernels import kv_quant, ops
from worker.compiled_decode import CompiledDecode
from worker.cuda_graphs import DecodeGraphs
from worker.draft_model import DraftModel
from worker.model.llama import LlamaForCausalLM
from worker.model.loader import torch_dtype
from worker.model_config import ModelConfig
from worker.parallel.comm import recv_intermediate, send_intermediate
from worker.parallel.state import ParallelState
from worker.sampler import RowTokens, Sampler
from worker.spec_decode import num_accepted
from worker.step_input import SamplingRow, StepInput
from worker.step_tensors import attention_metadata, token_tensors

_SEED_MASK = (1 << 63) - 1  # torch seeds are unsigned 64-bit; Python hashes of ints are stable


class ModelRunner:
    """Owns this rank's model shard and its paged KV cache, one tensor per local layer:
    [2 (key, value), num_blocks, block_size, local_kv_heads, head_dim], or with
    ``kv_cache_dtype`` "int8"/"fp8" 8-bit values and their scales (kernels/kv_quant.py), the
    last dimension head_dim + 4. The first TP rank of the last stage samples; the other ranks
    return None. A single-rank runner may hold a draft model (``draft``) that fills in the
    drafts of the steps it runs."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        parallel: ParallelState | None = None,
        kv_cache_dtype: str = "auto",
    ) -> None:
        self.model = model
        self.config = config
        self.parallel = parallel or ParallelState.single()
        self.block_size = block_size
        width = kv_quant.slot_width(config.head_dim, kv_cache_dtype)
        shape = (2, num_blocks, block_size, model.local_kv_heads, width)
        device = self.parallel.device
        kv_quant.check_device_supports(kv_cache_dtype, device)
        self.dtype = torch_dtype(config.dtype)
        cache_dtype = kv_quant.cache_dtype(kv_cache_dtype, self.dtype)
        # Zeroed, not empty: padded attention reads masked slots, and 0 * NaN would leak through.
        self.kv_caches = [
            torch.zeros(shape, dtype=cache_dtype, device=device)
            for _ in range(model.num_local_layers)
        ]
        self.samples = self.parallel.is_last_stage and self.parallel.tp_rank == 0
        self.sampler = Sampler()
        self._pending_send: dist.Work | None = None
        self.graphs: DecodeGraphs | None = None
        self.compiled: CompiledDecode | None = None
        # The previous step's sampling rows and tokens: a step built before they were known
        # reads its inputs from them (StepInput.pending_inputs).
        self._previous: tuple[list[SamplingRow], list[RowTokens]] = ([], [])
        self.draft: DraftModel | None = None

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
    def execute(self, step: StepInput) -> list[RowTokens] | None:
        if step.block_copies:
            self._copy_blocks(step.block_copies)
        if step.pending_inputs:
            rows, tokens = self._previous
            token_of = {row.request_id: t[-1].token_id for row, t in zip(rows, tokens, strict=True)}
            for index, request_id in step.pending_inputs:
                step.input_ids[index] = token_of[request_id]
        if self.draft is not None:
            self.draft.propose(step)
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
        drafts = self.draft.kv_caches if self.draft is not None else []
        for cache in [*self.kv_caches, *drafts]:
            ops.scatter_blocks(ops.gather_blocks(cache, sources), cache, destinations)

    def _execute(self, step: StepInput) -> list[RowTokens] | None:
        device = self.parallel.device
        graphs = self.graphs
        bucket = graphs.bucket_for(step) if graphs is not None else None
        if graphs is not None and bucket is not None:
            return self._sample(graphs.replay(step, bucket), step)
        if self.compiled is not None and self.compiled.accepts(step):
            return self._sample(self.compiled.run(step), step)
        meta = attention_metadata(step, self.block_size, device)
        intermediate = None
        if not self.parallel.is_first_stage:
            intermediate = recv_intermediate(
                len(step.input_ids), self.config.hidden_size, self.dtype, self.parallel
            )
        input_ids, positions = token_tensors(step, device)
        out = self.model(input_ids, positions, self.kv_caches, meta, intermediate)
        if not self.parallel.is_last_stage:
            assert isinstance(out, tuple)
            hidden, residual = out
            if self._pending_send is not None:
                self._pending_send.wait()  # surfaces a failed send of the previous step
            self._pending_send = send_intermediate(hidden, residual, self.parallel)
            return None
        assert isinstance(out, torch.Tensor)
        return self._sample(out, step)

    def _sample(self, out: torch.Tensor, step: StepInput) -> list[RowTokens] | None:
        device = self.parallel.device
        if not step.sampling:  # only prefill chunks that do not reach their prompt's end
            return [] if self.samples else None
        rows = torch.tensor(step.logits_rows, dtype=torch.int64, device=device)
        logits = self.model.compute_logits(out[rows])  # every TP rank joins its all-gather
        if not self.samples:
            return None
        # One sampled position per logits row: a row with drafts samples each it verifies.
        positions = [
            (row, row.position + j) for row in step.sampling for j in range(row.num_drafts + 1)
        ]
        sampled = self.sampler.sample(
            logits.cpu(),
            [row.params for row, _ in positions],
            [self._generator(row, position) for row, position in positions],
        )
        result: list[RowTokens] = []
        at = 0
        for row in step.sampling:
            tokens = sampled[at : at + row.num_drafts + 1]
            if row.num_drafts:
                drafts = step.input_ids[
                    step.logits_rows[at] + 1 : step.logits_rows[at] + 1 + row.num_drafts
                ]
                tokens = tokens[: num_accepted(drafts, [t.token_id for t in tokens]) + 1]
            result.append(tokens)
            at += row.num_drafts + 1
        return result

    @staticmethod
    def _generator(row: SamplingRow, position: int) -> torch.Generator | None:
        """A seeded row's noise depends on its seed and the position it samples, nothing else:
        not the batch, not how often the request was preempted and its position re-sampled, and
        not whether the position was verified as a draft (worker/spec_decode.py)."""
        if row.params.seed is None:
            return None
        return torch.Generator().manual_seed(hash((row.params.seed, position)) & _SEED_MASK)
