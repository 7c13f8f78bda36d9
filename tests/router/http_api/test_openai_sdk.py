"""The OpenAI API through the official openai SDK, sync and async, streamed and not: the same
tokens and text as gRPC for the same greedy request, on the same engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai

from router.client import GenerationClient
from router.http_api import ChatTemplate
from tests.router.http_api.conftest import MODEL_NAME
from tests.router.serving import RunningServer

PROMPT = (
    "The HTTP front door streams the same tokens as the gRPC one, block after block of the KV cache"
)
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Which front door is faster?"},
]
GREEDY = {"max_tokens": 24, "temperature": 0.0, "ignore_eos": True}


def _grpc(client: GenerationClient, prompt: str | list[int]) -> tuple[list[int], str, int]:
    responses = list(client.generate(prompt, **GREEDY))  # type: ignore[arg-type]
    tokens = [t for r in responses for t in r.token_ids]
    return tokens, "".join(r.text for r in responses), responses[-1].finished.usage.prompt_tokens


def _chat_prompt(demo_model_dir: Path) -> str:
    template = ChatTemplate.from_model_dir(demo_model_dir)
    assert template is not None
    return template.render(MESSAGES)


def test_completion_equals_grpc(
    openai_client: openai.OpenAI, grpc_client: GenerationClient, server: RunningServer
) -> None:
    tokens, text, prompt_tokens = _grpc(grpc_client, PROMPT)
    result = openai_client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, logprobs=0, extra_body={"ignore_eos": True}, **_sdk()
    )
    (choice,) = result.choices
    assert choice.text == text and choice.finish_reason == "length"
    assert choice.logprobs is not None
    decode = server.backend.requests.tokenizer.decode
    assert choice.logprobs.tokens == [decode([t]) for t in tokens]
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt_tokens, 24)
    server.wait_until_idle()


def test_streamed_completion_from_token_ids_equals_grpc(
    openai_client: openai.OpenAI, grpc_client: GenerationClient, server: RunningServer
) -> None:
    ids = grpc_client.tokenize(PROMPT)
    _, text, _ = _grpc(grpc_client, ids)
    stream = openai_client.completions.create(
        model=MODEL_NAME,
        prompt=ids,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
        **_sdk(),
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None and usage.completion_tokens == 24
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens > 0  # the gRPC call cached the prompt
    server.wait_until_idle()


def test_chat_equals_grpc_on_the_rendered_template(
    openai_client: openai.OpenAI,
    grpc_client: GenerationClient,
    server: RunningServer,
    demo_model_dir: Path,
) -> None:
    _, text, prompt_tokens = _grpc(grpc_client, _chat_prompt(demo_model_dir))
    result = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, extra_body={"ignore_eos": True}, **_sdk()
    )
    (choice,) = result.choices
    assert choice.message.role == "assistant" and choice.message.content == text
    assert result.usage is not None and result.usage.prompt_tokens == prompt_tokens
    server.wait_until_idle()


def test_async_streamed_chat_with_n_choices_and_logprobs(
    grpc_client: GenerationClient, server: RunningServer, demo_model_dir: Path
) -> None:
    tokens, text, _ = _grpc(grpc_client, _chat_prompt(demo_model_dir))

    async def stream() -> list[openai.types.chat.ChatCompletionChunk]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0
        ) as client:
            chunks = await client.chat.completions.create(
                model=MODEL_NAME,
                messages=MESSAGES,  # type: ignore[arg-type]
                n=3,
                logprobs=True,
                top_logprobs=2,
                stream=True,
                extra_body={"ignore_eos": True},
                **_sdk(),
            )
            return [chunk async for chunk in chunks]

    chunks = asyncio.run(stream())
    decode = server.backend.requests.tokenizer.decode
    for index in range(3):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == text
        assert [c.finish_reason for c in mine][-1] == "length"
        entries = [e for c in mine if c.logprobs for e in c.logprobs.content or []]
        assert [e.token for e in entries] == [decode([t]) for t in tokens]
        assert all(len(e.top_logprobs) == 2 for e in entries)
    server.wait_until_idle()


def test_models_lists_the_served_model(openai_client: openai.OpenAI) -> None:
    assert [m.id for m in openai_client.models.list()] == [MODEL_NAME]


def _sdk() -> dict[str, object]:
    return {"max_tokens": GREEDY["max_tokens"], "temperature": GREEDY["temperature"]}
