"""What crosses between a front door and an engine replica, in-process or through a Serve
call: the validated request in, its output deltas back. Plain, picklable and free of torch, so
the router imports them without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import KVFleetError
from worker.kv_transfer import KVHandle
from worker.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A request that passed validation (worker.request_builder.RequestBuilder is the only thing
    that makes one): its prompt is token ids within the vocabulary and the context, and its
    parameters are within the engine's limits. Engines run it without checking again.

    Disaggregated serving sets one of the last two: ``kv_lease_s`` on the prefill replica's
    request (its final output carries a KVHandle, and the prompt's blocks stay held for that
    long unless released first), ``kv_source`` on the decode replica's (pull the prompt's KV
    from that handle instead of computing it; recompute if the pull fails)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None = None
    kv_lease_s: float | None = None
    kv_source: KVHandle | None = None
    priority: int = 0  # lower runs first: admitted before, and preempted after, higher values
    deadline: float | None = None  # time.time() by which it must finish; refused if it cannot


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """The sampled token's log-probability and the top-n alternatives, from the raw logits."""

    token_logprob: float
    top: tuple[tuple[int, float], ...]


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
    prefilled_by: str | None = None  # disaggregated: the prefill replica's id, likewise
    num_transferred_tokens: int = 0  # prompt tokens whose KV was pulled from a prefill replica
    kv_handle: KVHandle | None = None  # a prefill request's final output: where its KV is
    # Speculative decoding: drafts verified for this request so far, and how many accepted.
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    # A request of several sequences (n > 1, beam search) streams each as its own outputs:
    # ``index`` says which; a sequence's last output has its ``finish_reason``, and only the
    # request's very last output has ``finished``. A beam's length-penalized ``score``.
    index: int = 0
    score: float | None = None
    failure: KVFleetError | None = None  # why the engine refused it (finish_reason "error")
