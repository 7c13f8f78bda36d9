"""Requests that run several sequences over one prompt: ``n`` parallel samples, or a beam search.

Every sequence is a Request of its own to the scheduler (so batching, budgets and block tables
work unchanged), tied to its group by ``group_id``. The prompt is computed once, by the group's
first sequence (the leader, whose id is the request's); the others are forks that share its
blocks (KVCacheManager.fork: one more reference each, a copy only of a partly filled block one
of them writes into):

    parallel samples:  leader prefills P tokens, samples its first token; then n - 1 forks
                       share its blocks, each recomputes token P - 1 (one token, into its own
                       copy of the last block) and samples its own first token, seeded
                       seed + i;
    beam search:       each step, every live beam offers its top tokens (worker/beam_search.py
                       decides); a beam chosen k times forks k - 1 times, a beam not chosen is
                       freed at once; the best n finished beams are the request's outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from worker.beam_search import Beam, BeamSearch
from worker.kv_cache_manager import KVCacheManager
from worker.messages import RequestOutput
from worker.output_state import OutputState
from worker.request import Request, RequestStatus
from worker.sampler import SampledToken
from worker.sampling_params import SamplingParams
from worker.scheduler import Scheduler
from worker.tokenizer import Tokenizer


class SequenceGroup:
    """One request's sequences, by id, with their index in the request's outputs."""

    def __init__(self, leader: Request, user_params: SamplingParams) -> None:
        self.request_id = leader.request_id
        self.leader = leader
        self.user_params = user_params
        self.members: dict[str, Request] = {leader.request_id: leader}
        self._next_id = 1

    def new_id(self) -> str:
        sequence_id = f"{self.request_id}#{self._next_id}"
        self._next_id += 1
        return sequence_id


class SequenceGroups:
    """The engine's side of every group: forks, drops, and the outputs each step produces."""

    def __init__(
        self,
        kv: KVCacheManager,
        scheduler: Scheduler,
        states: dict[str, OutputState],
        make_state: Callable[[Request], OutputState],
        tokenizer: Tokenizer,
        eos_ids: frozenset[int],
    ) -> None:
        self.kv = kv
        self.scheduler = scheduler
        self.states = states
        self.make_state = make_state
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self._groups: dict[str, SequenceGroup] = {}
        self._group_of: dict[str, SequenceGroup] = {}
        self._searches: dict[str, _BeamGroup] = {}
        self._index: dict[str, int] = {}  # a parallel sample's index in the outputs

    def add(self, leader: Request, user_params: SamplingParams) -> None:
        """Start the group of a queued request (its leader) with ``n`` or ``beam_width`` > 1."""
        group = SequenceGroup(leader, user_params)
        leader.group_id = group.request_id
        leader.pending_forks = user_params.num_sequences - 1
        self._groups[group.request_id] = group
        self._group_of[leader.request_id] = group
        if user_params.beam_search:
            stops = frozenset(user_params.stop_token_ids)
            if not user_params.ignore_eos:
                stops |= self.eos_ids
            search = BeamSearch(
                user_params.beam_width,
                user_params.max_tokens,
                stops,
                user_params.length_penalty,
                user_params.early_stopping,
            )
            leader.params = replace(leader.params, logprobs=search.num_candidates)
            self._searches[group.request_id] = _BeamGroup(search, leader.request_id)

    def group_of(self, sequence_id: str) -> SequenceGroup | None:
        return self._group_of.get(sequence_id)

    @property
    def request_ids(self) -> list[str]:
        """The requests whose groups still run."""
        return list(self._groups)

    def on_sample(
        self, group: SequenceGroup, request: Request, token: SampledToken
    ) -> list[RequestOutput]:
        """A sequence of ``group`` sampled ``token``; the outputs this produces."""
        search = self._searches.get(group.request_id)
        if search is not None:
            return self._on_beam_sample(group, search, request, token)
        if request is group.leader and request.pending_forks:
            self._fork_samples(group)
        request.append_output_token(token.token_id)
        if request.first_token_time is None:
            request.first_token_time = time.monotonic()
        state = self.states[request.request_id]
        status = state.on_token(token)
        index = self._index.get(request.request_id, 0)
        if status is not None:
            self._finish(group, request, status)
        output = state.take_output()
        return [
            replace(
                output,
                request_id=group.request_id,
                index=index,
                finished=group.request_id not in self._groups,
            )
        ]

    def abort(self, group_id: str) -> RequestOutput | None:
        """Stop every sequence of the group and free their blocks; the request's final output,
        or None if no such group runs."""
        group = self._groups.get(group_id)
        if group is None:
            return None
        for request in list(group.members.values()):
            self._finish(group, request, RequestStatus.FINISHED_ABORTED)
        self._close(group)
        return RequestOutput(
            group_id, [], "", None, finished=True, finish_reason="abort",
            num_prompt_tokens=group.leader.num_prompt_tokens,
        )  # fmt: skip

    # Parallel samples.

    def _fork_samples(self, group: SequenceGroup) -> None:
        """The leader's prompt is computed: fork the other samples from it, each to recompute
        the prompt's last token and sample its own first token (before the leader appends
        its own)."""
        leader, params = group.leader, group.user_params
        for index in range(1, params.n):
            seed = None if params.seed is None else (params.seed + index) % 2**63
            child = leader.fork(group.new_id(), leader.num_tokens, replace(params, seed=seed))
            child.num_computed_tokens = leader.num_tokens - 1
            self._adopt(group, leader, child, index)
        leader.pending_forks = 0

    # Beam search.

    def _on_beam_sample(
        self, group: SequenceGroup, beams: _BeamGroup, request: Request, token: SampledToken
    ) -> list[RequestOutput]:
        assert token.logprobs is not None, "a beam reports its top tokens"
        if request.first_token_time is None:
            request.first_token_time = time.monotonic()
        beams.top[request.request_id] = list(token.logprobs.top)
        if len(beams.top) < len(beams.live):
            return []  # the rest of the group is still on its way
        decision = beams.search.step(list(beams.live.values()), beams.top)
        beams.top = {}
        if decision.done:
            return self._finish_search(group, beams)
        # Forks first: a child copies its parent's tokens before the parent appends its own.
        uses: dict[str, int] = {}
        next_live: dict[str, Beam] = {}
        extend: list[tuple[Request, int]] = []
        for continuation in decision.continuations:
            parent = group.members[continuation.parent]
            uses[parent.request_id] = uses.get(parent.request_id, 0) + 1
            sequence = parent
            if uses[parent.request_id] > 1:
                sequence = parent.fork(group.new_id(), parent.num_tokens, parent.params)
                sequence.num_computed_tokens = parent.num_computed_tokens
                self._adopt(group, parent, sequence, 0)
            extend.append((sequence, continuation.token))
            tokens = (*beams.live[parent.request_id].tokens, continuation.token)
            next_live[sequence.request_id] = Beam(sequence.request_id, tokens, continuation.score)
        for sequence_id in [s for s in beams.live if s not in uses]:
            self._finish(group, group.members[sequence_id], RequestStatus.FINISHED_ABORTED)
        for sequence, token_id in extend:
            sequence.append_output_token(token_id)
        group.leader.pending_forks = 0  # the first step's forks are made: the seats are taken
        beams.live = next_live
        return []

    def _finish_search(self, group: SequenceGroup, beams: _BeamGroup) -> list[RequestOutput]:
        for request in list(group.members.values()):
            self._finish(group, request, RequestStatus.FINISHED_LENGTH)
        self._close(group)
        best = beams.search.best(group.user_params.n)
        leader = group.leader
        first = leader.first_token_time
        return [
            RequestOutput(
                request_id=group.request_id,
                token_ids=list(hypothesis.tokens),
                text=self.tokenizer.decode(list(hypothesis.tokens)),
                logprobs=None,
                finished=index == len(best) - 1,
                finish_reason=hypothesis.finish_reason,
                stop_reason=(hypothesis.tokens[-1] if hypothesis.finish_reason == "stop" else None),
                num_prompt_tokens=leader.num_prompt_tokens,
                num_output_tokens=len(hypothesis.tokens),
                num_cached_tokens=max(leader.num_cached_tokens, 0),
                time_to_first_token_s=None if first is None else first - leader.arrival_time,
                index=index,
                score=hypothesis.score,
            )
            for index, hypothesis in enumerate(best)
        ]

    # Bookkeeping.

    def _adopt(self, group: SequenceGroup, parent: Request, child: Request, index: int) -> None:
        """Run ``child``, forked from ``parent``, sharing its blocks."""
        self.kv.fork(parent, child)
        self.scheduler.adopt(child)
        group.members[child.request_id] = child
        self._group_of[child.request_id] = group
        self._index[child.request_id] = index
        self.states[child.request_id] = self.make_state(child)

    def _finish(self, group: SequenceGroup, request: Request, status: RequestStatus) -> None:
        """End one sequence and free its blocks; the group closes with its last sequence."""
        self.scheduler.finish(request, status)
        del self.states[request.request_id]
        del group.members[request.request_id]
        del self._group_of[request.request_id]
        self._index.pop(request.request_id, None)
        if not group.members:
            self._close(group)

    def _close(self, group: SequenceGroup) -> None:
        self._groups.pop(group.request_id, None)
        self._searches.pop(group.request_id, None)


class _BeamGroup:
    """A beam search's live beams (by sequence id) and the top tokens reported this step."""

    def __init__(self, search: BeamSearch, leader_id: str) -> None:
        self.search = search
        self.live: dict[str, Beam] = {leader_id: Beam(leader_id, (), 0.0)}
        self.top: dict[str, list[tuple[int, float]]] = {}
