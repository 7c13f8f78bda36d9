"""The OpenAI request bodies kvfleet accepts, and what they become: prompts and SamplingParams.

Unknown fields are refused (``extra="forbid"``), never silently ignored; fields OpenAI defines
that kvfleet does not implement are accepted only at their neutral value (``echo: false``,
``presence_penalty: 0``, ``tools: []``, ...) and refused with their name otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.errors import InvalidRequestError
from worker.sampling_params import SamplingParams

MAX_CHOICES = 64  # prompts x n, per request
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

_Int = Annotated[int, Field(strict=True)]
# Token ids or counts: JSON integers only (pydantic would otherwise take 1.0 or "1").


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: _Int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: _Int | None = None
    min_p: float | None = None
    seed: _Int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[_Int] | None = None
    n: Annotated[_Int, Field(ge=1, le=MAX_CHOICES)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    cache_salt: str | None = None
    priority: _Int | None = None  # vLLM's extension: lower runs first
    disable_speculation: bool = False  # kvfleet's: one token per step even where it drafts
    user: str | None = None
    # Defined by OpenAI, not implemented: neutral values only.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def check_unsupported(self) -> None:
        _neutral("presence_penalty", self.presence_penalty in (None, 0.0))
        _neutral("frequency_penalty", self.frequency_penalty in (None, 0.0))
        _neutral("logit_bias", not self.logit_bias)
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError("stream_options", "is only allowed with stream: true")

    def sampling(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        """The engine parameters of each prompt: its ``n`` choices are one engine request of
        ``n`` sequences sharing the prompt's KV (choice i seeded ``seed + i``)."""
        defaults = SamplingParams()
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            min_p=defaults.min_p if self.min_p is None else self.min_p,
            seed=self.seed,
            stop=stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            n=self.n,
            speculate=not self.disable_speculation,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Body):
    prompt: str | list[str] | list[_Int] | list[list[_Int]]
    logprobs: Annotated[_Int, Field(ge=0)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: _Int | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        _neutral("echo", not self.echo)
        _neutral("suffix", not self.suffix)
        _neutral("best_of", self.best_of in (None, 1, self.n))

    def prompts(self) -> list[str | list[int]]:
        """One prompt per entry: a string, a list of strings, token ids, or lists of them."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise InvalidRequestError("prompt", "is empty")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def max_tokens_or_default(self) -> int:
        return COMPLETION_DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def for_template(self) -> dict[str, Any]:
        """What the chat template sees: role and text content (text parts joined)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        message: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.name is not None:
            message["name"] = self.name
        return message


class ChatCompletionRequest(_Body):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: _Int | None = None
    logprobs: bool = False
    top_logprobs: Annotated[_Int, Field(ge=0)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        text = self.response_format is None or self.response_format == {"type": "text"}
        _neutral("response_format", text)
        _neutral("tools", not self.tools)
        _neutral("tool_choice", self.tool_choice in (None, "none"))
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs", "needs logprobs: true")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise InvalidRequestError(
                "max_completion_tokens", "set either it or max_tokens, not both"
            )

    def requested_max_tokens(self) -> int | None:
        """None: as many as the context and the KV cache leave room for."""
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens

    def top_logprobs_or_none(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def _neutral(field: str, ok: bool) -> None:
    if not ok:
        raise InvalidRequestError(field, "is not supported by kvfleet (leave it unset)")
