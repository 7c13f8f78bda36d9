"""Continuous batching: which requests run this step, and how many tokens each."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from worker.kv_cache_manager import KVCacheManager
from worker.request import Request, RequestStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """``run_ahead``: schedule a request's next position while the step that samples its
    current one is still in flight (the executor overlaps steps and fills the input in); never
    past what the pending sample may end (``max_tokens``, ``max_model_len``)."""

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    run_ahead: bool = False
    max_model_len: int | None = None


@dataclass(slots=True)
class ScheduledRequest:
    """``num_new_tokens`` tokens of ``request`` starting at ``start``. ``samples`` is true when
    this chunk reaches the request's last token, so its logits pick the next one. The last
    ``num_drafts`` of the tokens are drafts (``request.draft_token_ids``) for the step to verify.

    ``epoch`` is the request's preemption count when the chunk was scheduled. With several
    batches in flight, a request can be preempted (its blocks freed, its progress reset), even
    re-admitted and scheduled to its end again, before an older batch that holds it returns:

        batch k:    [.. A samples position n ..]          in flight
        batch k+1:  A preempted (blocks short)             in flight
        batch k+2:  A re-admitted, samples position n      in flight
        k returns:  its token for A is stale: A would get position n twice

    Results of a chunk apply only while ``is_current``."""

    request: Request
    start: int
    num_new_tokens: int
    samples: bool
    epoch: int
    num_drafts: int = 0

    @property
    def is_current(self) -> bool:
        """Neither finished (aborted) nor preempted since this chunk was scheduled."""
        request = self.request
        return not request.status.finished and request.num_preemptions == self.epoch


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def num_prefill_tokens(self) -> int:
        """Tokens computed beyond one decode token per generating request: prompt chunks, and
        the recompute of preempted requests; not drafts being verified."""
        total = 0
        for s in self.scheduled:
            tokens = s.num_new_tokens - s.num_drafts
            if tokens > 1 or s.start < s.request.num_prompt_tokens:
                total += tokens
        return total


class Scheduler:
    """One mixed batch per step under a token budget. Running requests first, in arrival order,
    each asking for the rest of its tokens (one for a decode, a chunk for a prefill); then waiting
    requests by priority (lower ``Request.priority`` first), FCFS among equals, while budget,
    sequence slots and blocks allow. When blocks run out the least important running request,
    the most recently admitted among equals, is preempted: its blocks are freed and it is
    recomputed later, mostly from the prefix cache."""

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, request: Request, front: bool = False) -> None:
        if front:
            self.waiting.appendleft(request)
        else:
            self.waiting.append(request)

    @property
    def num_seats(self) -> int:
        """Sequences running, and those their groups will still fork."""
        return len(self.running) + sum(r.pending_forks for r in self.running)

    @property
    def has_free_slot(self) -> bool:
        return self.num_seats < self.config.max_num_seqs

    def adopt(self, request: Request) -> None:
        """Run a sequence forked from a running one (it shares the blocks KVCacheManager.fork
        gave it), in the seat its group kept for it."""
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def resume(self, request: Request, num_cached_tokens: int) -> None:
        """Run a request that already holds its blocks, filled up to ``num_computed_tokens``
        by some other means (KV pulled from another replica); ``num_cached_tokens`` of them
        were this replica's own prefix-cache hits."""
        request.num_cached_tokens = num_cached_tokens
        request.first_scheduled_time = time.monotonic()
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def schedule(self, max_seqs: int | None = None) -> SchedulerOutput:
        """The next batch. ``max_seqs`` caps its sequences (to split requests among batches in
        flight); requests whose tokens are all in a batch still in flight are skipped."""
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        seq_cap = max_seqs or self.config.max_num_seqs
        index = 0
        while index < len(self.running) and budget > 0 and len(out.scheduled) < seq_cap:
            request = self.running[index]
            num_new = min(self._num_known(request) - request.num_computed_tokens, budget)
            if num_new == 0:
                index += 1
                continue
            while not self.kv.allocate_slots(request, num_new):
                if request.draft_token_ids:  # drafts are optional: drop them before preempting
                    request.draft_token_ids = []
                    num_new = min(num_new, request.num_tokens - request.num_computed_tokens)
                    continue
                victims = self._group_of(self._victim())
                # A victim's sibling may be in this batch already: take it out again, so that
                # the step writes nothing into the blocks freed now.
                index -= sum(1 for r in self.running[:index] if r in victims)
                budget += self._unschedule(out, victims)
                for victim in reversed(victims):
                    self.running.remove(victim)
                    self._preempt(victim)
                out.preempted += victims
                if request in victims:
                    break
            else:
                out.scheduled.append(self._take(request, num_new))
                budget -= num_new
                index += 1

        # A step that had to preempt admits nobody: the pool is already short.
        while not out.preempted and self.waiting and budget > 0:
            position = self._next_waiting()
            request = self.waiting[position]
            seats = 1 + request.pending_forks
            if self.num_seats + seats > self.config.max_num_seqs or len(out.scheduled) >= seq_cap:
                break
            admitted = self.kv.admit(request, budget)
            if admitted is None:
                break
            del self.waiting[position]
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = request.num_computed_tokens
            if request.first_scheduled_time is None:
                request.first_scheduled_time = time.monotonic()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.scheduled.append(self._take(request, admitted))
            budget -= admitted
        return out

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Take a request out, wherever it is, and free its blocks."""
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif not request.status.finished:
            self.waiting.remove(request)
        request.status = status
        self.kv.free(request)

    def _num_known(self, request: Request) -> int:
        """Tokens whose position may be computed now: those appended and the drafts proposed
        after them, and with ``run_ahead`` the one a step in flight samples, unless that sample
        may end the request."""
        pending = request.num_pending_samples
        if not pending:
            return request.num_tokens + len(request.draft_token_ids)
        max_len = self.config.max_model_len
        ends = request.num_output_tokens + pending >= request.params.max_tokens or (
            max_len is not None and request.num_tokens + pending >= max_len
        )
        return request.num_tokens + (0 if ends else pending)

    def _take(self, request: Request, num_new: int) -> ScheduledRequest:
        start = request.num_computed_tokens
        # Advance now, so a chunk is never scheduled twice even before its step completes.
        request.num_computed_tokens += num_new
        known = request.num_tokens + request.num_pending_samples
        samples = request.num_computed_tokens >= known
        num_drafts = max(0, request.num_computed_tokens - known)
        # Drafts the budget left out are dropped, not scheduled in a later batch while this one
        # is in flight (they would verify positions this step has not decided yet).
        del request.draft_token_ids[num_drafts:]
        # A group's sequences never run ahead: what each does next (fork, drop, continue)
        # is decided once the whole group's step is back.
        if samples and self.config.run_ahead and request.group_id is None:
            request.num_pending_samples += 1
        return ScheduledRequest(
            request, start, num_new, samples, request.num_preemptions, num_drafts
        )

    def _next_waiting(self) -> int:
        """The position in ``waiting`` of the request to admit next: the most important
        (lowest ``priority``), the first in the queue among equals (preempted requests are at
        its front)."""
        best = min(enumerate(self.waiting), key=lambda entry: (entry[1].priority, entry[0]))
        return best[0]

    def _victim(self) -> Request:
        """The running request to preempt next: the least important (highest ``priority``),
        the most recently admitted among equals."""
        return max(enumerate(self.running), key=lambda entry: (entry[1].priority, entry[0]))[1]

    def _group_of(self, request: Request) -> list[Request]:
        """The running sequences preempted with ``request``: its whole group, if it has one."""
        if request.group_id is None:
            return [request]
        return [r for r in self.running if r.group_id == request.group_id]

    @staticmethod
    def _unschedule(out: SchedulerOutput, requests: list[Request]) -> int:
        """Take ``requests`` out of the batch being built; the tokens this frees."""
        taken = [item for item in out.scheduled if item.request in requests]
        out.scheduled = [item for item in out.scheduled if item.request not in requests]
        return sum(item.num_new_tokens for item in taken)

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_pending_samples = 0  # their steps' results are stale now
        request.draft_token_ids = []
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)
