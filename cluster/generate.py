"""`kvfleet generate`: stream one completion from a running router (`kvfleet up`)."""

from __future__ import annotations

import sys

import grpc

from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerationClient, Sampling

_REASONS = {
    value: name.removeprefix("FINISH_REASON_").lower() for name, value in pb.FinishReason.items()
}


def run(
    target: str,
    prompt: str,
    sampling: Sampling,
    cache_salt: str = "",
    timeout_s: float = 120.0,
    credentials: grpc.ChannelCredentials | None = None,
    token: str | None = None,
) -> int:
    """Stream the completion to stdout, a summary to stderr; 1 if the call failed."""
    with GenerationClient(target, credentials, token) as client:
        stream = client.generate(prompt, cache_salt=cache_salt, timeout=timeout_s, **sampling)
        try:
            echoed = False
            for response in stream:
                if not echoed:  # only once the request was accepted
                    sys.stdout.write(prompt)
                    echoed = True
                sys.stdout.write(response.text)
                sys.stdout.flush()
                if response.HasField("finished"):
                    _summary(response.finished)
        except grpc.RpcError as exc:
            print(f"\nkvfleet generate: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def _summary(done: pb.Finished) -> None:
    usage, timings = done.usage, done.timings
    prefilled = (
        f", prefilled on {done.prefill_replica} ({usage.transferred_tokens} tokens' KV moved)"
        if done.prefill_replica
        else ""
    )
    print(
        f"\n[{_REASONS[done.reason]} on replica {done.replica}{prefilled}: {usage.prompt_tokens} "
        f"prompt tokens ({usage.cached_tokens} cached), {usage.completion_tokens} generated, "
        f"first token after {1000 * timings.time_to_first_token_s:.0f} ms]",
        file=sys.stderr,
    )
