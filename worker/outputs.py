"""What the engine streams back for a request: deltas, then a final message."""

from __future__ import annotations

from dataclasses import dataclass

from worker.sampler import TokenLogprobs


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """New tokens and text since the previous output of the same request. The last output has
    ``finished`` set, a ``finish_reason`` ("stop", "length", "abort" or "error"), the matched
    stop (a string or token id) in ``stop_reason``, and usage and timings."""

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprobs] | None
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    queue_time_s: float | None = None
    time_to_first_token_s: float | None = None
    error: str | None = None
    served_by: str | None = None  # the replica's id, set on the final output when routed
