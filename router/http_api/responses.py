"""OpenAI response bodies and stream chunks, built from the engine's output deltas."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from worker.messages import RequestOutput, TokenLogprobs
from worker.tokenizer import Tokenizer


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; ``[DONE]`` ends the stream."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


@dataclass
class ChoiceState:
    """One choice (a prompt's i-th sample) as its deltas arrive."""

    index: int
    text: list[str] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)  # chat: content entries; else per token
    text_offset: int = 0  # characters so far (completions' logprobs.text_offset)
    started: bool = False  # a chat choice's first chunk carries the role
    final: RequestOutput | None = None


class ResponseBuilder:
    """Shapes one request's choices as /v1/completions or /v1/chat/completions does."""

    def __init__(self, request_id: str, model: str, chat: bool, tokenizer: Tokenizer) -> None:
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
        self.model = model
        self.chat = chat
        self.created = int(time.time())
        self._tokenizer = tokenizer

    def chunk(self, choice: ChoiceState, output: RequestOutput) -> dict[str, Any]:
        """The stream chunk for one delta of one choice."""
        logprobs = self._logprobs(choice, output)
        body: dict[str, Any] = {"index": choice.index}
        if self.chat:
            delta: dict[str, Any] = {"content": output.text}
            if not choice.started:
                delta = {"role": "assistant", **delta}
            body["delta"] = delta
            body["logprobs"] = None if logprobs is None else {"content": logprobs}
        else:
            body["text"] = output.text
            body["logprobs"] = logprobs
        choice.started = True
        body["finish_reason"] = output.finish_reason  # set on the choice's last delta only
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [body])

    def add(self, choice: ChoiceState, output: RequestOutput) -> None:
        """Accumulate one delta for the whole (non-streamed) response."""
        choice.text.append(output.text)
        logprobs = self._logprobs(choice, output)
        if logprobs is not None:
            choice.logprobs.append(logprobs)
        if output.finish_reason is not None:
            choice.final = output

    def response(self, choices: list[ChoiceState], usage: dict[str, Any]) -> dict[str, Any]:
        bodies = []
        for choice in choices:
            assert choice.final is not None, "a choice ended without its final output"
            body: dict[str, Any] = {"index": choice.index}
            text = "".join(choice.text)
            if self.chat:
                body["message"] = {"role": "assistant", "content": text}
                entries = [e for part in choice.logprobs for e in part]
                body["logprobs"] = {"content": entries} if choice.logprobs else None
            else:
                body["text"] = text
                body["logprobs"] = _merge_completion_logprobs(choice.logprobs)
            body["finish_reason"] = choice.final.finish_reason
            bodies.append(body)
        response = self._envelope("chat.completion" if self.chat else "text_completion", bodies)
        response["usage"] = usage
        return response

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        response = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        response["usage"] = usage
        return response

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _logprobs(self, choice: ChoiceState, output: RequestOutput) -> Any:
        if output.logprobs is None:
            return None
        pieces = [self._token(t) for t in output.token_ids]
        if self.chat:
            return [
                _chat_entry(piece, lp, self._token)
                for piece, lp in zip(pieces, output.logprobs, strict=True)
            ]
        offsets = []
        for piece in pieces:
            offsets.append(choice.text_offset)
            choice.text_offset += len(piece)
        return {
            "tokens": pieces,
            "token_logprobs": [lp.token_logprob for lp in output.logprobs],
            "top_logprobs": [{self._token(t): p for t, p in lp.top} for lp in output.logprobs],
            "text_offset": offsets,
        }

    def _token(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])


def usage(choices: list[ChoiceState], n: int) -> dict[str, Any]:
    """Prompt tokens count once per prompt (its first choice's figures: its n choices share
    the prompt's KV); completion tokens count every choice. Speculative decoding's verified
    drafts are reported under OpenAI's predicted-output names (accepted and rejected)."""
    finals = [c.final for c in choices if c.final is not None]
    firsts = [c.final for c in choices if c.final is not None and c.index % n == 0]
    prompt = sum(o.num_prompt_tokens for o in firsts)
    completion = sum(o.num_output_tokens for o in finals)
    accepted = sum(o.num_accepted_tokens for o in finals)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(o.num_cached_tokens for o in firsts)},
        "completion_tokens_details": {
            "accepted_prediction_tokens": accepted,
            "rejected_prediction_tokens": sum(o.num_draft_tokens for o in finals) - accepted,
        },
    }


def _chat_entry(piece: str, lp: TokenLogprobs, token: Any) -> dict[str, Any]:
    def one(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    entry = one(piece, lp.token_logprob)
    entry["top_logprobs"] = [one(token(t), p) for t, p in lp.top]
    return entry


def _merge_completion_logprobs(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not parts:
        return None
    return {key: [v for part in parts for v in part[key]] for key in parts[0]}
