"""Validate and tokenize a request against one engine configuration, before any engine sees it.

The engine runs it on every request; the router runs the same code with the same configuration,
so a bad request is refused at the edge with the engine's own message, and replicas receive
token ids that already passed every check.
"""

from __future__ import annotations

from worker.config import EngineConfig
from worker.errors import InvalidRequestError, ModelLoadError
from worker.messages import GenerationRequest
from worker.model_config import ModelConfig
from worker.sampling_params import SamplingLimits, SamplingParams
from worker.tokenizer import Tokenizer

MAX_ID_CHARS = 256  # request ids and cache salts
# A text prompt longer than this many characters per token of the context cannot fit; it is
# refused before the tokenizer spends time on it. (``max_prompt_chars`` overrides.)
PROMPT_CHARS_PER_TOKEN = 16


def max_model_len(config: EngineConfig, model_config: ModelConfig) -> int:
    """The longest context served: the configured one, which may not exceed the model's."""
    if config.max_model_len is not None and config.max_model_len > model_config.max_model_len:
        raise ModelLoadError(
            f"{config.model}: max_model_len {config.max_model_len} exceeds the model's "
            f"context of {model_config.max_model_len} tokens"
        )
    return config.max_model_len or model_config.max_model_len


def num_kv_blocks(config: EngineConfig, model_config: ModelConfig) -> int:
    """KV blocks per replica: ``num_kv_blocks`` if set, else what ``kv_cache_bytes`` holds."""
    per_block = model_config.kv_bytes_per_block(
        config.parallel, config.block_size, config.kv_cache_dtype
    )
    if config.draft_model is not None:  # the draft's cache follows the same block tables
        draft = ModelConfig.from_dir(config.draft_model, model_config.dtype)
        per_block += draft.kv_bytes_per_block(config.parallel, config.block_size)
    return config.num_kv_blocks or max(1, config.kv_cache_bytes // per_block)


class RequestBuilder:
    """Turns (id, prompt, sampling parameters, salt) into a validated GenerationRequest. It
    touches no engine state, so any thread (or process) may call it."""

    @classmethod
    def for_config(cls, config: EngineConfig) -> RequestBuilder:
        """The builder of an engine configured by ``config`` (its dtype already resolved, as
        an engine reports it), read from the model directory: for the sides that serve an
        engine running elsewhere (an engine process, Serve replicas)."""
        model_config = ModelConfig.from_dir(config.model, config.dtype)
        return cls(config, model_config, Tokenizer.from_dir(config.model))

    def __init__(
        self, config: EngineConfig, model_config: ModelConfig, tokenizer: Tokenizer
    ) -> None:
        self.tokenizer = tokenizer
        self.block_size = config.block_size
        self.vocab_size = model_config.vocab_size
        self.max_model_len = max_model_len(config, model_config)
        self.num_blocks = num_kv_blocks(config, model_config)
        self.max_prompt_chars = config.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * (
            self.max_model_len
        )
        self.limits = SamplingLimits(
            max_model_len=self.max_model_len,
            vocab_size=model_config.vocab_size,
            max_stop_strings=config.max_stop_strings,
            max_stop_string_chars=config.max_stop_string_chars,
            max_logprobs=config.max_logprobs,
            max_n=min(config.max_n, config.max_num_seqs),
            max_beam_width=min(config.max_beam_width, config.max_num_seqs),
        )

    def check_sizes(self, request_id: str, prompt: str | list[int], cache_salt: str | None) -> None:
        """The checks that cost nothing, before any work is spent on the request: a front door
        runs them on its event loop, and tokenizes only what passes."""
        if not request_id:
            raise InvalidRequestError("request_id", "is empty")
        if len(request_id) > MAX_ID_CHARS:
            raise InvalidRequestError(
                "request_id", f"{len(request_id)} characters, at most {MAX_ID_CHARS}"
            )
        if cache_salt is not None and len(cache_salt) > MAX_ID_CHARS:
            raise InvalidRequestError(
                "cache_salt", f"{len(cache_salt)} characters, at most {MAX_ID_CHARS}"
            )
        if isinstance(prompt, str) and len(prompt) > self.max_prompt_chars:
            raise InvalidRequestError(
                "prompt",
                f"{len(prompt)} characters, at most {self.max_prompt_chars} "
                f"({PROMPT_CHARS_PER_TOKEN} per token of the {self.max_model_len}-token context)",
            )
        if not isinstance(prompt, str) and len(prompt) >= self.max_model_len:
            raise self._too_long(len(prompt))

    def build(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        cache_salt: str | None = None,
    ) -> GenerationRequest:
        """Raise InvalidRequestError naming the offending field, or return the request with its
        prompt as token ids. Tokenizing is the costly part: off the event loop, please."""
        self.check_sizes(request_id, prompt, cache_salt)
        if isinstance(prompt, str):
            token_ids = self.tokenizer.encode(prompt) if prompt else []
        else:
            token_ids = list(prompt)
            bad = next((t for t in token_ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise InvalidRequestError(
                    "prompt_token_ids",
                    f"token id {bad} is outside the vocabulary [0, {self.vocab_size})",
                )
        if not token_ids:
            raise InvalidRequestError("prompt", "is empty")
        if len(token_ids) >= self.max_model_len:
            raise self._too_long(len(token_ids))
        params.validate(len(token_ids), self.limits)
        needed = -(-(len(token_ids) + params.max_tokens) // self.block_size)
        if needed > self.num_blocks:
            raise InvalidRequestError(
                "max_tokens",
                f"prompt plus max_tokens need {needed} KV blocks; the cache has {self.num_blocks}",
            )
        return GenerationRequest(request_id, token_ids, params, cache_salt or None)

    def _too_long(self, num_tokens: int) -> InvalidRequestError:
        return InvalidRequestError(
            "prompt",
            f"{num_tokens} tokens leave no room in the model's context of "
            f"{self.max_model_len} tokens",
        )
