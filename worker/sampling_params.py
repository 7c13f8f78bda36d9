"""Per-request sampling parameters and their validation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from worker.errors import InvalidRequestError


@dataclass(frozen=True)
class SamplingLimits:
    """What the engine accepts; set from its config so operators can tighten them."""

    max_model_len: int
    vocab_size: int
    max_stop_strings: int = 16
    max_stop_string_chars: int = 256
    max_stop_token_ids: int = 64
    max_logprobs: int = 20
    max_n: int = 16
    max_beam_width: int = 16


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops. ``temperature == 0`` is greedy.

    ``n`` sequences share the prompt's KV blocks (worker/sequence_groups.py): sampled
    independently, sequence ``i`` seeded with ``seed + i`` when ``seed`` is set; or, with
    ``beam_width`` > 1, the best ``n`` of a beam search kept at ``beam_width`` beams, scored by
    cumulative log-probability over ``generated_length ** length_penalty`` and stopped as
    transformers' ``generate(num_beams=...)`` stops (``early_stopping`` likewise)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    beam_width: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    speculate: bool = True  # verify drafts when the engine decodes speculatively

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def beam_search(self) -> bool:
        return self.beam_width > 1

    @property
    def num_sequences(self) -> int:
        """How many sequences the request runs at once."""
        return self.beam_width if self.beam_search else self.n

    def validate(self, num_prompt_tokens: int, limits: SamplingLimits) -> None:
        """Raise InvalidRequestError naming the first bad field."""
        if self.max_tokens < 1:
            raise InvalidRequestError("max_tokens", f"must be at least 1, got {self.max_tokens}")
        room = limits.max_model_len - num_prompt_tokens
        if self.max_tokens > room:
            raise InvalidRequestError(
                "max_tokens",
                f"{self.max_tokens} tokens after a {num_prompt_tokens}-token prompt exceed the "
                f"model's context of {limits.max_model_len} (at most {room})",
            )
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):  # NaN too
            raise InvalidRequestError(
                "temperature", f"must be a finite number >= 0, got {self.temperature}"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < -1 or self.top_k == 0:
            raise InvalidRequestError("top_k", f"must be -1 (off) or >= 1, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidRequestError("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidRequestError("seed", f"must be in [0, 2**63), got {self.seed}")
        if self.logprobs is not None and not 0 <= self.logprobs <= limits.max_logprobs:
            raise InvalidRequestError(
                "logprobs", f"must be in [0, {limits.max_logprobs}], got {self.logprobs}"
            )
        self._validate_stops(limits)
        self._validate_sequences(limits)

    def _validate_sequences(self, limits: SamplingLimits) -> None:
        if not 1 <= self.n <= limits.max_n:
            raise InvalidRequestError("n", f"must be in [1, {limits.max_n}], got {self.n}")
        if not 1 <= self.beam_width <= limits.max_beam_width:
            raise InvalidRequestError(
                "beam_width", f"must be in [1, {limits.max_beam_width}], got {self.beam_width}"
            )
        if not math.isfinite(self.length_penalty):
            raise InvalidRequestError(
                "length_penalty", f"must be a finite number, got {self.length_penalty}"
            )
        if not self.beam_search:
            if self.length_penalty != 1.0 or self.early_stopping:
                field = "length_penalty" if self.length_penalty != 1.0 else "early_stopping"
                raise InvalidRequestError(field, "applies to beam search only (beam_width > 1)")
            return
        # Beam search ranks continuations by log-probability: nothing is sampled.
        if not self.greedy:
            raise InvalidRequestError(
                "temperature", f"beam search needs temperature 0, got {self.temperature}"
            )
        if self.n > self.beam_width:
            raise InvalidRequestError(
                "n", f"beam search returns at most beam_width ({self.beam_width}) sequences"
            )
        if self.stop:
            raise InvalidRequestError(
                "stop", "stop strings do not apply to beam search; use stop_token_ids"
            )
        if self.logprobs is not None:
            raise InvalidRequestError("logprobs", "not returned by beam search")

    def _validate_stops(self, limits: SamplingLimits) -> None:
        if len(self.stop) > limits.max_stop_strings:
            raise InvalidRequestError(
                "stop", f"{len(self.stop)} stop strings, at most {limits.max_stop_strings}"
            )
        for text in self.stop:
            if not text:
                raise InvalidRequestError("stop", "a stop string is empty")
            if len(text) > limits.max_stop_string_chars:
                raise InvalidRequestError(
                    "stop",
                    f"a stop string of {len(text)} characters, "
                    f"at most {limits.max_stop_string_chars}",
                )
        if len(self.stop_token_ids) > limits.max_stop_token_ids:
            raise InvalidRequestError(
                "stop_token_ids",
                f"{len(self.stop_token_ids)} ids, at most {limits.max_stop_token_ids}",
            )
        for token_id in self.stop_token_ids:
            if not 0 <= token_id < limits.vocab_size:
                raise InvalidRequestError(
                    "stop_token_ids",
                    f"{token_id} is outside the vocabulary [0, {limits.vocab_size})",
                )
