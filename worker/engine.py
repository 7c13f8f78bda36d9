"""The engine core: requests in, one scheduled and executed batch per step, outputs out."""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace

import torch

from worker.config import EngineConfig
from worker.draft_model import DraftModel
from worker.dtype_choice import resolve_dtype
from worker.errors import (
    DuplicateRequestError,
    InvalidRequestError,
    ModelLoadError,
    OverloadedError,
    WorkerFailedError,
)
from worker.executor import Executor, LocalExecutor, OverlappingExecutor
from worker.kv_cache_manager import KVCacheManager
from worker.kv_events import KVEvent
from worker.kv_transfer import KVHandle, KVLayout
from worker.kv_transfer.exports import KVExports, kv_layout_of
from worker.kv_transfer.handle import prompt_digest
from worker.kv_transfer.imports import KVImports
from worker.load_report import LoadReport, PrefillRateMeter
from worker.messages import GenerationRequest, RequestOutput
from worker.model.loader import load_model, torch_dtype
from worker.model_config import ModelConfig
from worker.model_runner import ModelRunner
from worker.output_state import OutputState
from worker.parallel.state import ParallelState
from worker.prompt_lookup import PromptLookup
from worker.request import Request, RequestStatus
from worker.request_builder import RequestBuilder
from worker.sampler import RowTokens
from worker.sampling_params import SamplingParams
from worker.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from worker.sequence_groups import SequenceGroups
from worker.spec_decode import DRAFTED_BY_MODEL, draft_budget
from worker.step_input import build_step_input
from worker.tokenizer import Tokenizer

_log = logging.getLogger(__name__)


@dataclass
class StepTimes:
    """Seconds spent in each phase of every step so far; the benchmark reads them.
    ``execute`` is the wait for the ranks' forward pass and sampling."""

    steps: int = 0
    schedule: float = 0.0
    prepare: float = 0.0
    execute: float = 0.0
    output: float = 0.0


class Engine:
    """Synchronous engine core: not thread-safe; AsyncEngine drives it from one thread."""

    def __init__(self, config: EngineConfig) -> None:
        # Ranks run where the driver would put its own model: the GPU when there is one.
        self.device_type = "cuda" if torch.cuda.is_available() else "cpu"
        config = replace(config, dtype=resolve_dtype(config.dtype, self.device_type))
        self.config = config
        self.model_config = ModelConfig.from_dir(config.model, config.dtype)
        self.tokenizer = Tokenizer.from_dir(config.model)
        try:
            config.parallel.validate(self.model_config)
        except ValueError as exc:
            raise ModelLoadError(f"{config.model}: {exc}") from exc
        self.requests = RequestBuilder(config, self.model_config, self.tokenizer)
        num_blocks = self.requests.num_blocks
        torch.manual_seed(config.seed)
        self.executor = self._make_executor(num_blocks)
        self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(
                config.max_num_batched_tokens,
                config.max_num_seqs,
                run_ahead=self.executor.runs_ahead,
                max_model_len=self.max_model_len,
            ),
            self.kv,
        )
        self.times = StepTimes()
        # KV transfer with other replicas (disaggregated serving), when configured.
        self.engine_id = uuid.uuid4().hex[:12]
        self.kv_layout: KVLayout = kv_layout_of(config, self.model_config)
        leased = False  # whether exported blocks stay held for their reader
        if config.kv_transport is not None:
            leased = self.executor.open_kv_transport(
                config.kv_transport, f"kvfleet-{self.engine_id}"
            )
        self.exports = KVExports(self.kv, self.executor, self.engine_id, self.kv_layout, leased)
        self.imports = KVImports(
            self.kv, self.scheduler, self.executor, config.kv_transfer_timeout_s
        )
        self._states: dict[str, OutputState] = {}
        self._eos_ids = frozenset(self.model_config.eos_token_ids)
        self.groups = SequenceGroups(
            self.kv, self.scheduler, self._states, self._output_state, self.tokenizer,
            self._eos_ids,
        )  # fmt: skip
        self._in_flight: deque[tuple[SchedulerOutput, float]] = deque()  # (batch, submitted)
        self.prefill_rate = PrefillRateMeter()
        self._last_result = 0.0  # when the previous step's tokens came back
        self.prompt_lookup: PromptLookup | None = None
        if config.speculative_method == "prompt_lookup":
            self.prompt_lookup = PromptLookup(config.prompt_lookup_min, config.prompt_lookup_max)

    def _make_executor(self, num_blocks: int) -> Executor:
        config, mc = self.config, self.model_config
        if config.world_size == 1:
            device = torch.device(self.device_type)
            state = ParallelState(config.parallel, device=device)
            model = load_model(
                config.model,
                mc,
                state,
                device,
                load_format=config.load_format,
                seed=config.seed,
                quantization=config.quantization,
            )
            runner = ModelRunner(
                model, mc, num_blocks, config.block_size, state, config.kv_cache_dtype
            )
            if config.compiles_steps(device.type):
                self._compile(runner)
            if device.type == "cuda" and not config.enforce_eager:
                max_batch = min(config.cuda_graph_max_batch, config.max_num_seqs)
                runner.capture_decode_graphs(self.max_model_len, max_batch)
            if config.speculative_method == "draft_model":
                runner.draft = self._load_draft(num_blocks, state)
            overlap = config.async_scheduling
            if overlap is None:
                overlap = device.type == "cuda" and config.speculative_method is None
            if overlap:
                return OverlappingExecutor(runner, config.step_timeout_s)
            return LocalExecutor(runner)
        import ray  # only multi-rank replicas need Ray

        from worker.executor.ray_executor import RayExecutor

        if not ray.is_initialized():
            ray.init()  # joins RAY_ADDRESS if set, else starts a local cluster
        return RayExecutor(config, num_blocks)

    def _load_draft(self, num_blocks: int, state: ParallelState) -> DraftModel:
        """The draft model beside the target: same vocabulary, at least its context."""
        config = self.config
        assert config.draft_model is not None  # EngineConfig checks
        draft_config = ModelConfig.from_dir(config.draft_model, self.model_config.dtype)
        if draft_config.vocab_size != self.model_config.vocab_size:
            raise ModelLoadError(
                f"{config.draft_model}: the draft model's vocabulary of "
                f"{draft_config.vocab_size} tokens differs from the target's "
                f"{self.model_config.vocab_size}"
            )
        if draft_config.max_model_len < self.max_model_len:
            raise ModelLoadError(
                f"{config.draft_model}: the draft model's context of "
                f"{draft_config.max_model_len} tokens is shorter than the served "
                f"{self.max_model_len}"
            )
        model = load_model(
            config.draft_model, draft_config, state, state.device, config.load_format, config.seed
        )
        return DraftModel(
            model, num_blocks, config.block_size, torch_dtype(draft_config.dtype), state.device
        )

    def _compile(self, runner: ModelRunner) -> None:
        """Compile decode steps, or log why they stay eager: a replica that cannot compile
        still serves."""
        try:
            seconds = runner.compile_decode(self.max_model_len, max(2, self.config.max_num_seqs))
        except Exception as exc:  # Dynamo and Inductor raise many types; none is fatal here
            _log.warning("decode steps run eagerly: torch.compile failed: %s", exc)
        else:
            _log.info("decode steps compiled in %.1f s", seconds)

    @property
    def max_model_len(self) -> int:
        """The longest context served (the configured one, capped by the model's)."""
        return self.requests.max_model_len

    @property
    def num_blocks(self) -> int:
        return self.kv.pool.num_blocks

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0 or bool(self._in_flight or self.imports.waiting)

    def make_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        cache_salt: str | None = None,
    ) -> GenerationRequest:
        """Validate and tokenize; touches no engine state, so any thread may call it."""
        return self.requests.build(request_id, prompt, params, cache_salt)

    def add_request(self, request: GenerationRequest) -> None:
        """Queue a validated request (see ``make_request``)."""
        if request.request_id in self._states:
            raise DuplicateRequestError(request.request_id)
        if request.kv_source is not None:
            self._check_source(request.kv_source, request.prompt_token_ids)
        if request.kv_lease_s is not None and self.config.kv_transport is None:
            raise InvalidRequestError("kv_lease_s", "this engine has no KV transport open")
        several = request.params.num_sequences > 1
        if several and request.kv_lease_s is not None:  # a prefill computes one sequence
            field = "beam_width" if request.params.beam_search else "n"
            raise InvalidRequestError(field, "a prefill for another replica runs one sequence")
        queued = Request(
            request.request_id,
            request.prompt_token_ids,
            request.params,
            self.config.block_size,
            request.cache_salt,
            priority=request.priority,
        )
        if request.kv_source is not None:
            queued.expected_prefill_tokens = 1  # the rest is pulled, not computed
        else:
            hits = len(self.kv.get_computed_blocks(queued)) * self.config.block_size
            queued.expected_prefill_tokens = queued.num_tokens - hits
        self._check_wait(queued, request.deadline)
        self._states[request.request_id] = self._output_state(queued)
        if several:
            self.groups.add(queued, request.params)
        if request.kv_lease_s is not None:
            self.exports.add(request.request_id, request.kv_lease_s)
        if request.kv_source is not None:
            self.imports.add(queued, request.kv_source)
        else:
            self.scheduler.add(queued)

    def _check_wait(self, request: Request, deadline: float | None) -> None:
        """Refuse a request that would wait too long: the prompt tokens ahead of it and its
        own, at the measured prefill rate (nothing is refused before a rate is measured)."""
        rate = self.prefill_rate.tokens_per_s
        limit = self.config.max_queue_wait_s
        if rate <= 0 or (limit is None and deadline is None):
            return
        scheduler = self.scheduler
        ahead = sum(r.expected_prefill_tokens for r in scheduler.waiting) + sum(
            max(0, r.num_prompt_tokens - r.num_computed_tokens) for r in scheduler.running
        )
        wait = (ahead + request.expected_prefill_tokens) / rate
        if limit is not None and wait > limit:
            raise OverloadedError(
                f"the replica's queue would keep this request about {wait:.1f} s before its "
                f"first token, more than {limit:g} s"
            )
        if deadline is not None and time.time() + wait > deadline:
            raise OverloadedError(
                f"the replica's queue would keep this request about {wait:.1f} s, past its "
                f"deadline in {max(0.0, deadline - time.time()):.1f} s"
            )

    def _output_state(self, request: Request) -> OutputState:
        return OutputState(request, self.tokenizer, self._eos_ids, self.max_model_len)

    def _check_source(self, handle: KVHandle, prompt: list[int]) -> None:
        """A handle is pulled from only by an engine with a transport like its own, with the
        same KV layout, for the very prompt it was made for."""
        if self.config.kv_transport is None:
            raise InvalidRequestError("kv_source", "this engine has no KV transport open")
        self.kv_layout.check_compatible(handle.layout)
        if handle.num_tokens != len(prompt) or handle.prompt_digest != prompt_digest(prompt):
            raise InvalidRequestError("kv_source", "the handle was made for another prompt")
        if len(handle.block_ids) < -(-handle.num_tokens // self.kv.block_size):
            raise InvalidRequestError("kv_source", "the handle lists too few blocks")

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request wherever it is and free its blocks; its final output, or None if the
        id is unknown (finished already, say)."""
        if request_id in self.groups.request_ids:
            return self.groups.abort(request_id)
        state = self._states.pop(request_id, None)
        if state is None:
            return None
        self.exports.discard(request_id)
        if self.imports.remove(state.request):
            state.request.status = RequestStatus.FINISHED_ABORTED
        else:
            self.scheduler.finish(state.request, RequestStatus.FINISHED_ABORTED)
        return state.take_output()

    def release_kv(self, request_id: str) -> bool:
        """The reader of an exported request's blocks is done: free them. False if they are
        not held (released already, expired, or never leased)."""
        return self.exports.release(request_id)

    def expire_leases(self) -> list[str]:
        """Free the exported blocks whose lease ran out; their request ids."""
        return self.exports.expire(time.monotonic())

    def idle_wait_s(self) -> float | None:
        """How long the step loop may wait for a command: 0 with work to do, until the next
        lease runs out if one is held, else for ever (None)."""
        if self.has_unfinished():
            return 0.0
        expiry = self.kv.next_expiry()
        return None if expiry is None else max(0.0, expiry - time.monotonic())

    def step(self) -> list[RequestOutput]:
        """Keep up to ``executor.max_in_flight`` batches running; finish the oldest."""
        times = self.times
        if self.imports.waiting and not self._in_flight:
            self.imports.start()  # pulls write blocks, so no step may be running
        # While pulls wait, let the steps in flight finish (a bubble) rather than start more.
        while len(self._in_flight) < self.executor.max_in_flight and not (
            self.imports.waiting and self._in_flight
        ):
            t0 = time.perf_counter()
            batch = self.scheduler.schedule(self._batch_seq_cap())
            t1 = time.perf_counter()
            times.schedule += t1 - t0
            if not batch.scheduled:
                break
            step = build_step_input(
                batch, self.kv.block_ids, self.config.block_size, self.kv.take_copies()
            )
            t2 = time.perf_counter()
            times.prepare += t2 - t1
            try:
                self.executor.submit(step)  # the in-process executor runs the step right here
            except WorkerFailedError:
                self._abort_all()
                raise
            self._in_flight.append((batch, t2))
            times.execute += time.perf_counter() - t2
        if not self._in_flight:
            return []
        t2 = time.perf_counter()
        try:
            sampled = self.executor.receive()
        except WorkerFailedError:
            self._abort_all()
            raise
        t3 = time.perf_counter()
        batch, submitted = self._in_flight.popleft()
        # Steps run in order, so none starts before the previous one's result: from the later
        # of its submission and that result. With pipeline parallelism stages overlap, so this
        # still undercounts the throughput by up to the number of stages.
        self.prefill_rate.observe(batch.num_prefill_tokens, t3 - max(submitted, self._last_result))
        self._last_result = t3
        outputs = self._process(batch, sampled)
        times.execute += t3 - t2
        times.output += time.perf_counter() - t3
        times.steps += 1
        return outputs

    def _batch_seq_cap(self) -> int | None:
        """With several pipeline stages in flight, split the requests among them so that no
        stage idles (a scheduler running ahead puts the same requests in each step instead)."""
        slots = self.executor.max_in_flight
        if slots == 1 or self.executor.runs_ahead:
            return None
        return max(1, -(-self.scheduler.num_unfinished // slots))

    def _process(self, batch: SchedulerOutput, sampled: list[RowTokens]) -> list[RequestOutput]:
        current = [item for item in batch.scheduled if item.is_current]
        for item in current:
            self.kv.cache_blocks(item.request)
        now = time.monotonic()
        outputs = []
        sampling = [item for item in batch.scheduled if item.samples]
        for item, tokens in zip(sampling, sampled, strict=True):
            if not item.is_current:  # aborted or preempted while its batch was in flight
                continue
            request = item.request
            group = self.groups.group_of(request.request_id)
            if group is not None:  # groups never draft
                outputs += self.groups.on_sample(group, request, tokens[0])
                continue
            if self.scheduler.config.run_ahead:
                request.num_pending_samples -= 1
            if item.num_drafts:
                self._settle_drafts(request, item.num_drafts, len(tokens) - 1)
            if request.first_token_time is None:
                request.first_token_time = now
            state = self._states[request.request_id]
            status = None
            for token in tokens:
                request.append_output_token(token.token_id)
                status = state.on_token(token)
                if status is not None:  # the rest of the accepted drafts are dropped
                    break
            handle = None
            if status is not None:
                handle = self.exports.finish(request)  # before finish() frees the blocks
                self.scheduler.finish(request, status)
                del self._states[request.request_id]
            else:
                self._propose_drafts(request)
            output = state.take_output()
            outputs.append(output if handle is None else replace(output, kv_handle=handle))
        return outputs

    @staticmethod
    def _settle_drafts(request: Request, num_drafts: int, num_accepted: int) -> None:
        """Count a verification, and forget the KV of the rejected drafts: their positions are
        computed again, with the tokens the target chose."""
        request.num_computed_tokens -= num_drafts - num_accepted
        request.num_draft_tokens += num_drafts
        request.num_accepted_tokens += num_accepted
        request.draft_token_ids = []

    def _propose_drafts(self, request: Request) -> None:
        """The drafts the request's next step verifies (none without speculative decoding, or
        when the request turned it off)."""
        method = self.config.speculative_method
        if method is None or not request.params.speculate:
            return
        budget = draft_budget(
            request.num_tokens,
            request.num_output_tokens,
            request.params.max_tokens,
            self.max_model_len,
            self.config.num_speculative_tokens,
        )
        if self.prompt_lookup is not None:
            request.draft_token_ids = self.prompt_lookup.propose(request.all_token_ids, budget)
        else:
            request.draft_token_ids = [DRAFTED_BY_MODEL] * budget

    def _abort_all(self) -> None:
        """The replica lost a rank: every request ends, and every block goes back to the pool."""
        self._in_flight.clear()
        for request_id in [*self.groups.request_ids, *self._states]:
            self.abort(request_id)

    def shutdown(self) -> None:
        self.executor.shutdown()

    def load_report(self) -> LoadReport:
        scheduler = self.scheduler
        return self.kv.load_report(
            [*scheduler.waiting, *self.imports.requests],
            scheduler.running,
            self.prefill_rate.tokens_per_s,
        )

    def drain_kv_events(self) -> list[KVEvent]:
        return self.kv.pool.events.drain()

    def check_integrity(self) -> None:
        self.kv.check_integrity()
        scheduler = self.scheduler
        queued = [*scheduler.waiting, *scheduler.running, *self.imports.requests]
        live = {r.request_id for r in queued}
        assert live == set(self._states), "scheduler and output states disagree"
