"""A small synchronous client for kvfleet.v1.Generation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypedDict, Unpack

import grpc

from protos.kvfleet.v1 import generation_pb2 as pb
from protos.kvfleet.v1 import generation_pb2_grpc as pb_grpc


class Sampling(TypedDict, total=False):
    """kvfleet.v1.SamplingParameters as keyword arguments; unset ones take the engine's
    defaults."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    max_tokens: int
    stop: list[str]
    stop_token_ids: list[int]
    ignore_eos: bool
    logprobs: int
    include_stop_str_in_output: bool
    n: int
    beam_width: int
    length_penalty: float
    early_stopping: bool
    disable_speculation: bool


class GenerateStream:
    """The deltas of one Generate call, the last with ``finished`` set. ``cancel`` ends the call
    (the server aborts the request); iterating then raises grpc.RpcError (CANCELLED)."""

    def __init__(self, call: grpc.Call) -> None:
        self._call = call

    def __iter__(self) -> Iterator[pb.GenerateResponse]:
        return iter(self._call)

    def cancel(self) -> None:
        self._call.cancel()


class GenerationClient:
    """Generate, Abort, Tokenize and ListModels over one channel; a context manager."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        """Plain text, or TLS with ``credentials`` (grpc.ssl_channel_credentials); ``token``
        is sent as a bearer token with every call."""
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.channel = (
            grpc.insecure_channel(target)
            if credentials is None
            else grpc.secure_channel(target, credentials)
        )
        self.stub = pb_grpc.GenerationStub(self.channel)

    def generate(
        self,
        prompt: str | list[int],
        *,
        request_id: str = "",
        cache_salt: str = "",
        model: str = "",
        timeout: float | None = None,
        priority: int | None = None,
        **sampling: Unpack[Sampling],
    ) -> GenerateStream:
        request = pb.GenerateRequest(
            model=model,
            sampling=pb.SamplingParameters(**sampling),
            cache_salt=cache_salt,
            request_id=request_id,
            priority=priority,
        )
        if isinstance(prompt, str):
            request.text = prompt
        else:
            request.token_ids.ids.extend(prompt)
        return GenerateStream(self.stub.Generate(request, timeout=timeout, metadata=self.metadata))

    def abort(self, request_id: str) -> bool:
        """Abort a running request; False if none by that id is running."""
        response: pb.AbortResponse = self.stub.Abort(
            pb.AbortRequest(request_id=request_id), metadata=self.metadata
        )
        return response.found

    def tokenize(self, text: str, model: str = "") -> list[int]:
        response: pb.TokenizeResponse = self.stub.Tokenize(
            pb.TokenizeRequest(model=model, text=text), metadata=self.metadata
        )
        return list(response.token_ids)

    def list_models(self) -> list[pb.Model]:
        response: pb.ListModelsResponse = self.stub.ListModels(
            pb.ListModelsRequest(), metadata=self.metadata
        )
        return list(response.models)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GenerationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
