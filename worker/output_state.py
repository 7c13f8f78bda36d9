"""Per-request output bookkeeping: text, stop conditions, and the delta to stream next."""

from __future__ import annotations

from worker.detokenizer import Detokenizer
from worker.messages import RequestOutput, TokenLogprobs
from worker.request import Request, RequestStatus
from worker.sampler import SampledToken
from worker.tokenizer import Tokenizer


class OutputState:
    """Decides when a request is done and what it may stream.

    Text that could still turn out to be the start of a stop string is held back, so a client
    never sees part of a stop string that then matches:

        text:  [ streamed ........ | held back (a prefix of some stop string) ]
    """

    def __init__(
        self, request: Request, tokenizer: Tokenizer, eos_ids: frozenset[int], max_model_len: int
    ) -> None:
        self.request = request
        self._detokenizer = Detokenizer(tokenizer, request.prompt_token_ids)
        self._stop_ids = frozenset(request.params.stop_token_ids)
        self._eos_ids = frozenset() if request.params.ignore_eos else eos_ids
        self._max_model_len = max_model_len
        self._text = ""
        self._sent_chars = 0
        self._new_ids: list[int] = []
        self._new_logprobs: list[TokenLogprobs] = []

    def on_token(self, sampled: SampledToken) -> RequestStatus | None:
        """Record a sampled token (already appended to the request); the finish status, if any."""
        request, params = self.request, self.request.params
        token = sampled.token_id
        self._new_ids.append(token)
        if sampled.logprobs is not None:
            self._new_logprobs.append(sampled.logprobs)
        if token in self._stop_ids or token in self._eos_ids:
            request.stop_reason = token
            self._text += self._detokenizer.flush()
            return RequestStatus.FINISHED_STOPPED
        delta = self._detokenizer.push(token)
        self._text += delta
        if params.stop and delta and self._match_stop(len(self._text) - len(delta)):
            return RequestStatus.FINISHED_STOPPED
        if request.num_output_tokens >= params.max_tokens or (
            request.num_tokens >= self._max_model_len
        ):
            self._text += self._detokenizer.flush()
            return RequestStatus.FINISHED_LENGTH
        return None

    def take_output(self) -> RequestOutput:
        """The delta since the last call; the final message when the request has finished."""
        request = self.request
        finished = request.status.finished
        end = len(self._text) if finished else len(self._text) - self._held_back()
        text = self._text[self._sent_chars : end]
        self._sent_chars = max(self._sent_chars, end)
        ids, self._new_ids = self._new_ids, []
        logprobs, self._new_logprobs = self._new_logprobs, []
        scheduled = request.first_scheduled_time
        first_token = request.first_token_time
        return RequestOutput(
            request_id=request.request_id,
            token_ids=ids,
            text=text,
            logprobs=logprobs if request.params.logprobs is not None else None,
            finished=finished,
            finish_reason=request.status.value if finished else None,
            stop_reason=request.stop_reason,
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            num_cached_tokens=max(request.num_cached_tokens, 0),
            num_transferred_tokens=request.num_transferred_tokens,
            num_draft_tokens=request.num_draft_tokens,
            num_accepted_tokens=request.num_accepted_tokens,
            queue_time_s=None if scheduled is None else scheduled - request.arrival_time,
            time_to_first_token_s=(
                None if first_token is None else first_token - request.arrival_time
            ),
        )

    def _match_stop(self, new_from: int) -> bool:
        stops = self.request.params.stop
        start = max(0, new_from - max(len(s) for s in stops) + 1)
        best: tuple[int, str] | None = None
        for stop in stops:
            at = self._text.find(stop, start)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return False
        at, stop = best
        keep = at + len(stop) if self.request.params.include_stop_str_in_output else at
        self._text = self._text[:keep]
        self.request.stop_reason = stop
        return True

    def _held_back(self) -> int:
        stops = self.request.params.stop
        if not stops:
            return 0
        unsent = len(self._text) - self._sent_chars
        for size in range(min(unsent, max(len(s) for s in stops) - 1), 0, -1):
            tail = self._text[-size:]
            if any(stop.startswith(tail) for stop in stops):
                return size
        return 0
