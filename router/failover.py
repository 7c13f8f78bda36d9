"""A request whose replica dies carries on elsewhere, and its client sees one unbroken stream.

A request that had produced no token yet is simply sent again. One that was streaming continues
on another replica: its prompt extended by the tokens already sent, its ``max_tokens`` reduced by
as many, so that replica prefills what the client has and generates what it has not:

    client sees:   [ t1 t2 t3 | t4 t5 ... ]
                    replica A   replica B, asked for prompt + t1 t2 t3
                    (dies)

Greedy and seeded sampling pick the same tokens there (a seeded row's noise depends only on its
seed and position). Text already sent is not repeated: B's detokenizer starts after t3. Text of
sent tokens that A still held back (a possible start of a stop string) is sent before B's
first delta; a stop string that straddles the two replicas is not matched. Requests of several
sequences (n > 1, beam search) are retried only while nothing was streamed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from worker.errors import EngineDeadError, WorkerFailedError
from worker.messages import GenerationRequest, RequestOutput
from worker.tokenizer import Tokenizer

_log = logging.getLogger(__name__)

Generate = Callable[[GenerationRequest], AsyncGenerator[RequestOutput, None]]


async def with_failover(
    generate: Generate,
    request: GenerationRequest,
    tokenizer: Tokenizer,
    attempts: int = 3,
    on_failure: Callable[[GenerationRequest], None] | None = None,
) -> AsyncGenerator[RequestOutput, None]:
    """``generate(request)``'s stream; when it fails because its replica was lost (the
    replica died: WorkerFailedError; its engine stopped: EngineDeadError), up to
    ``attempts - 1`` continuations take over. ``on_failure`` hears of each failed attempt
    first (to drop that replica from routing, say)."""
    sent: list[int] = []
    text = ""
    current = request
    for attempt in range(attempts):
        held_back = _unsent_text(tokenizer, request.prompt_token_ids, sent, text)
        try:
            async with aclosing(generate(current)) as stream:
                async for output in stream:
                    if held_back:
                        output = dataclasses.replace(output, text=held_back + output.text)
                        held_back = ""
                    sent += output.token_ids
                    text += output.text
                    yield output if current is request else _as_original(output, request, sent)
            return
        except (WorkerFailedError, EngineDeadError):
            if on_failure is not None:
                on_failure(current)
            if attempt == attempts - 1 or not _continuable(request, sent):
                raise
            _log.warning(
                "request %s lost its replica after %d tokens; continuing elsewhere",
                request.request_id,
                len(sent),
            )
            current = _continuation(request, sent)


def _unsent_text(tokenizer: Tokenizer, prompt: list[int], sent: list[int], text: str) -> str:
    """The text of the ``sent`` tokens beyond the ``text`` streamed for them (what a lost
    replica held back), decoded after the prompt's last tokens as the engine's detokenizer
    does (some tokenizers drop a leading space at the start of a text)."""
    if not sent:
        return ""
    context = prompt[-6:]
    base = tokenizer.decode(context)
    whole = tokenizer.decode(context + sent)
    sent_text = whole[len(base) :] if whole.startswith(base) else tokenizer.decode(sent)
    return sent_text[len(text) :] if sent_text.startswith(text) else ""


def _continuable(request: GenerationRequest, sent: list[int]) -> bool:
    """Whether what was sent can be carried on: always before the first token; after it, only
    for a request of one sequence whose remaining tokens still fit."""
    if not sent:
        return True
    return request.params.num_sequences == 1 and len(sent) < request.params.max_tokens


def _continuation(request: GenerationRequest, sent: list[int]) -> GenerationRequest:
    if not sent:
        return request
    params = dataclasses.replace(request.params, max_tokens=request.params.max_tokens - len(sent))
    return dataclasses.replace(
        request,
        prompt_token_ids=request.prompt_token_ids + sent,
        params=params,
        kv_source=None,  # a pulled prompt is not this one: computed where it lands
    )


def _as_original(
    output: RequestOutput, request: GenerationRequest, sent: list[int]
) -> RequestOutput:
    """A continuation's output in the original request's terms: its prompt and all its
    output tokens (the continuation counts the sent ones as prompt)."""
    if not output.finished:
        return output
    return dataclasses.replace(
        output,
        num_prompt_tokens=len(request.prompt_token_ids),
        num_output_tokens=len(sent),
        num_cached_tokens=min(output.num_cached_tokens, len(request.prompt_token_ids)),
    )
