"""The OpenAI-compatible HTTP front door: FastAPI routes over the same Backend and Intake as the
gRPC service, so both share validation, routing, admission, cancellation and error mapping.

    POST /v1/completions, POST /v1/chat/completions   (streamed as server-sent events, or not)
    GET  /v1/models, GET /health                      (200 only while a request can be served)

A request of ``n`` choices (and, for completions, several prompts) fans out to independent
engine requests, routed like any other, that share the prefix cache. Closing a stream (a client
that disconnects) closes every backend stream, which aborts the requests and frees their KV
blocks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from router.auth import OPEN_HTTP_PATHS, Client, TokenAuth
from router.http_api.chat_template import ChatTemplate
from router.http_api.errors import HTTPError, HTTPErrorRaised, http_error
from router.http_api.protocol import MAX_CHOICES, ChatCompletionRequest, CompletionRequest
from router.http_api.responses import ChoiceState, ResponseBuilder, sse, usage
from router.intake import Intake
from router.metrics import CONTENT_TYPE
from worker.errors import DeadlineExceededError, InvalidRequestError, WorkerFailedError
from worker.messages import GenerationRequest, RequestOutput

REQUEST_ID_HEADER = "X-Request-Id"


@dataclass(frozen=True)
class HTTPConfig:
    """``request_timeout_s``: a request still unfinished after it is aborted and answered 504
    (None: no limit). ``max_body_bytes``: larger bodies are refused with 413."""

    request_timeout_s: float | None = None
    max_body_bytes: int = 32 << 20


def build_app(
    intake: Intake,
    chat_template: ChatTemplate | None,
    config: HTTPConfig | None = None,
    auth: TokenAuth | None = None,
) -> FastAPI:
    """The ASGI app; ``chat_template`` None refuses chat completions with a 400; with ``auth``,
    every path but /health needs an accepted bearer token (401 otherwise)."""
    routes = _Routes(intake, chat_template, config or HTTPConfig())
    app = FastAPI(title="kvfleet", docs_url=None, redoc_url=None, openapi_url=None)
    if auth is not None:
        app.middleware("http")(_require_token(auth))
    app.add_api_route("/v1/completions", routes.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/metrics", routes.metrics, methods=["GET"])
    return app


class _Routes:
    def __init__(
        self, intake: Intake, chat_template: ChatTemplate | None, config: HTTPConfig
    ) -> None:
        self.intake = intake
        self.backend = intake.backend
        self.chat_template = chat_template
        self.config = config

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, chat=True)

    async def models(self) -> Response:
        builder = self.backend.requests
        model = {
            "id": self.backend.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "kvfleet",
            "max_model_len": builder.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [model]})

    async def metrics(self) -> Response:
        """Prometheus exposition: vLLM-named metrics of both front doors and the engines."""
        loads = await self.backend.load_reports()
        return Response(self.intake.metrics.render(loads), media_type=CONTENT_TYPE)

    async def health(self) -> Response:
        if self.backend.healthy():
            return JSONResponse({"status": "ok"})
        return _error_response(HTTPError(503, "no replica is ready", "unavailable_error"), None)

    async def _serve(self, request: Request, chat: bool) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or f"kvf-{uuid.uuid4().hex}"
        prompt_field = "messages" if chat else "prompt"
        loop = asyncio.get_running_loop()
        timeout = self.config.request_timeout_s
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                body = await self._parse(request, chat)
                client = self.intake.client_of(request.headers.get("authorization"))
                requests = await self._validate(request_id, body, client)
                stream = _merge([self.intake.generate(r, client) for r in requests])
                first = await anext(stream, None)
        except TimeoutError:
            return _error_response(http_error(_deadline()), request_id)
        except Exception as exc:
            return _error_response(http_error(exc, prompt_field), request_id)
        assert first is not None, "a backend stream ended without a final output"
        builder = ResponseBuilder(
            request_id, self.backend.model_name, chat, self.backend.requests.tokenizer
        )
        choices = [ChoiceState(i) for i in range(len(requests) * body.n)]
        headers = {REQUEST_ID_HEADER: request_id}
        events = _Events(stream, first, deadline)
        if body.stream:
            chunks = self._stream(events, builder, choices, body)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
        try:
            async for prompt, output in events:
                _check_ended_well(output)
                builder.add(choices[prompt * body.n + output.index], output)
        except Exception as exc:
            return _error_response(http_error(exc, prompt_field), request_id)
        return JSONResponse(builder.response(choices, usage(choices, body.n)), headers=headers)

    async def _stream(
        self,
        events: _Events,
        builder: ResponseBuilder,
        choices: list[ChoiceState],
        body: CompletionRequest | ChatCompletionRequest,
    ) -> AsyncGenerator[bytes, None]:
        """The response's events. An error after the first chunk is one last event in
        OpenAI's error shape (the status is sent already), then the stream ends."""
        try:
            async for prompt, output in events:
                _check_ended_well(output)
                choice = choices[prompt * body.n + output.index]
                yield sse(builder.chunk(choice, output))
                if output.finish_reason is not None:
                    choice.final = output
            if body.include_usage:
                yield sse(builder.usage_chunk(usage(choices, body.n)))
        except Exception as exc:
            yield sse(http_error(exc).body())
        yield sse("[DONE]")

    async def _parse(
        self, request: Request, chat: bool
    ) -> CompletionRequest | ChatCompletionRequest:
        raw = await _read_body(request, self.config.max_body_bytes)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            error = HTTPError(400, f"the body is not valid JSON: {exc}", "invalid_request_error")
            raise HTTPErrorRaised(error) from None
        if not isinstance(data, dict):
            error = HTTPError(400, "the body must be a JSON object", "invalid_request_error")
            raise HTTPErrorRaised(error)
        kind: type[BaseModel] = ChatCompletionRequest if chat else CompletionRequest
        body = kind.model_validate(data)
        assert isinstance(body, CompletionRequest | ChatCompletionRequest)
        body.check_unsupported()
        self.intake.check_model(body.model or "")
        return body

    async def _validate(
        self,
        request_id: str,
        body: CompletionRequest | ChatCompletionRequest,
        client: Client | None,
    ) -> list[GenerationRequest]:
        """One validated engine request per prompt, running its n choices. Each prompt is
        tokenized once;
        a chat request without max_tokens gets all the room its prompt leaves."""
        builder = self.backend.requests
        salt = body.cache_salt
        builder.check_sizes(request_id, "", salt)
        if isinstance(body, ChatCompletionRequest):
            prompts: list[str | list[int]] = [await self._render(body)]
        else:
            prompts = body.prompts()
            if len(prompts) * body.n > MAX_CHOICES:
                raise InvalidRequestError(
                    "n", f"{len(prompts)} prompts x n={body.n} exceed {MAX_CHOICES} choices"
                )
        single = len(prompts) == 1
        requests = []
        for p, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                builder.check_sizes(request_id, prompt, salt)
                prompt = await self.intake.run(builder.tokenizer.encode, prompt) if prompt else []
            if isinstance(body, ChatCompletionRequest):
                max_tokens = body.requested_max_tokens()
                if max_tokens is None:
                    room = min(builder.max_model_len, builder.num_blocks * builder.block_size)
                    max_tokens = max(1, room - len(prompt))
                logprobs = body.top_logprobs_or_none()
            else:
                max_tokens, logprobs = body.max_tokens_or_default(), body.logprobs
            prompt_id = request_id if single else f"{request_id}-{p}"
            params = body.sampling(max_tokens, logprobs)
            timeout = self.config.request_timeout_s
            requests.append(
                await self.intake.validate(
                    prompt_id, prompt, params, salt, body.priority, client, timeout
                )
            )
        return requests

    async def _render(self, body: ChatCompletionRequest) -> str:
        if self.chat_template is None:
            raise InvalidRequestError(
                "messages",
                f"model {self.backend.model_name!r} has no chat template; use /v1/completions "
                "or start the server with --chat-template FILE",
            )
        messages = [m.for_template() for m in body.messages]
        return await self.intake.run(self.chat_template.render, messages, True)


class _Events:
    """The merged stream with its first item already taken (before the response status was
    chosen); each wait bounded by the request's deadline."""

    def __init__(
        self,
        stream: AsyncGenerator[tuple[int, RequestOutput], None],
        first: tuple[int, RequestOutput],
        deadline: float | None,
    ) -> None:
        self._stream, self._first, self._deadline = stream, first, deadline

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        async with aclosing(self._stream):
            yield self._first
            while True:
                try:
                    async with asyncio.timeout_at(self._deadline):
                        item = await anext(self._stream, None)
                except TimeoutError:
                    raise _deadline() from None
                if item is None:
                    return
                yield item


async def _merge(
    streams: list[AsyncGenerator[RequestOutput, None]],
) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """(stream index, output) from every stream as they come. Closing the merge, or a stream
    failing, closes every stream (each close aborts its request)."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for output in only:
                yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | None, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[RequestOutput, None]) -> None:
        try:
            async with aclosing(stream):
                async for output in stream:
                    await queue.put((index, output, None))
            await queue.put((index, None, None))
        except Exception as exc:
            await queue.put((index, None, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is None:
                running -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _check_ended_well(output: RequestOutput) -> None:
    if output.finished and output.finish_reason in ("error", "abort"):
        raise WorkerFailedError(output.error or f"the request ended with {output.finish_reason}")


def _deadline() -> DeadlineExceededError:
    return DeadlineExceededError("the server's request timeout passed; the request was aborted")


def _error_response(error: HTTPError, request_id: str | None) -> JSONResponse:
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPErrorRaised(_too_large(limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPErrorRaised(_too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> HTTPError:
    return HTTPError(413, f"the body exceeds {limit} bytes", "invalid_request_error")


def _require_token(
    auth: TokenAuth,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def require_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in OPEN_HTTP_PATHS or auth.allows(request.headers.get("authorization")):
            return await call_next(request)
        error = HTTPError(401, "a valid 'Authorization: Bearer TOKEN' is required",
                          "authentication_error", code="invalid_api_key")  # fmt: skip
        return JSONResponse(error.body(), 401, headers={"WWW-Authenticate": "Bearer"})

    return require_token
