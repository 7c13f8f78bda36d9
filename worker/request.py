"""A request's state inside the engine, from arrival to finish."""

from __future__ import annotations

import enum
import time

from worker.block_hash import BlockHash, extend_block_hashes, extra_keys_for
from worker.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {
    RequestStatus.FINISHED_STOPPED,
    RequestStatus.FINISHED_LENGTH,
    RequestStatus.FINISHED_ABORTED,
}


class Request:
    """Tokens so far (prompt, then output), how many of them have KV in the cache, and the hashes
    of the full blocks among them.

        all_token_ids:  [ prompt ........................ | output ....... ]
                          <---- num_computed_tokens ---->   the rest is scheduled next
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        block_size: int,
        cache_salt: str | None = None,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> None:
        self.request_id = request_id
        self.priority = priority  # lower runs first (admitted first, preempted last)
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.cache_salt = cache_salt
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1  # prefix-cache hit at first scheduling; -1 until then
        self.num_preemptions = 0
        self.num_transferred_tokens = 0  # prompt tokens whose KV another replica computed
        # Tokens sampled by a step still in flight, not yet appended: a scheduler that runs
        # ahead schedules the next position already, its input filled in by the runner.
        self.num_pending_samples = 0
        # Speculative decoding (worker/spec_decode.py): tokens proposed for the next step to
        # verify (DRAFTED_BY_MODEL where the runner's draft model fills them in), and how many
        # drafts were verified and accepted so far.
        self.draft_token_ids: list[int] = []
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.status = RequestStatus.WAITING
        self.stop_reason: str | int | None = None
        # A sequence of a group (n > 1, or beam search; worker/sequence_groups.py): the group's
        # request id, and the sequences it will still fork (seats the scheduler keeps for them).
        self.group_id: str | None = None
        self.pending_forks = 0
        # The prompt tokens it will compute when admitted, as the prefix cache held at arrival.
        self.expected_prefill_tokens = len(prompt_token_ids)
        self._block_size = block_size
        self._extra_keys = extra_keys_for(cache_salt)
        self.block_hashes: list[BlockHash] = []
        self.update_block_hashes()

    @property
    def extra_keys(self) -> tuple[tuple[str, str], ...]:
        """The tagged keys that enter this request's first block hash."""
        return self._extra_keys

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[len(self.prompt_token_ids) :]

    def append_output_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)
        if len(self.all_token_ids) % self._block_size == 0:
            self.update_block_hashes()

    def fork(self, request_id: str, num_tokens: int, params: SamplingParams) -> Request:
        """A new sequence of the same group: this one's first ``num_tokens`` tokens, no KV of
        its own yet (KVCacheManager.fork shares this one's blocks with it)."""
        child = Request(
            request_id,
            self.prompt_token_ids,
            params,
            self._block_size,
            self.cache_salt,
            self.arrival_time,
            self.priority,
        )
        child.all_token_ids = self.all_token_ids[:num_tokens]
        child.block_hashes = self.block_hashes[: num_tokens // self._block_size]
        child.first_scheduled_time = self.first_scheduled_time
        child.first_token_time = self.first_token_time
        child.num_cached_tokens = self.num_cached_tokens
        child.group_id = self.group_id
        return child

    def update_block_hashes(self) -> None:
        extend_block_hashes(
            self.block_hashes, self.all_token_ids, self._block_size, self._extra_keys
        )
