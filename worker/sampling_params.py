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


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops. ``temperature == 0`` is greedy."""

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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

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
