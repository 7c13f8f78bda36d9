"""Both front doors over a speculating engine: the final response counts the drafts verified
and accepted (gRPC's usage, OpenAI's predicted-output usage), /metrics adds them up, and a
request can turn speculation off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from cluster.local_backend import LocalBackend
from router.client import GenerationClient
from tests.prometheus import scrape
from tests.router.serving import RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine

MODEL_NAME = "demo-tiny"
# A prompt that repeats itself: prompt lookup finds drafts in it.
PROMPT = list(range(500, 530)) * 3


@pytest.fixture(scope="module")
def server(demo_model_dir: Path) -> Iterator[RunningServer]:
    engine = AsyncEngine(make_engine(demo_model_dir, speculative_method="prompt_lookup"))
    running = RunningServer(LocalBackend(engine, MODEL_NAME), http=True)
    yield running
    running.close()


def _spec_metrics(server: RunningServer) -> tuple[float, float]:
    samples = scrape(f"{server.base_url}/metrics")
    label = f"{{model_name={MODEL_NAME}}}"
    return (
        samples.get(f"vllm:spec_decode_num_draft_tokens_total{label}", 0.0),
        samples.get(f"vllm:spec_decode_num_accepted_tokens_total{label}", 0.0),
    )


def test_drafts_are_counted_in_the_final_response_and_the_metrics(
    server: RunningServer,
) -> None:
    before = _spec_metrics(server)
    with GenerationClient(f"127.0.0.1:{server.port}") as client:
        final = list(client.generate(PROMPT, max_tokens=40, temperature=0.0, ignore_eos=True))[-1]
        off = list(
            client.generate(
                PROMPT, max_tokens=40, temperature=0.0, ignore_eos=True, disable_speculation=True
            )
        )[-1]
    usage = final.finished.usage
    assert usage.draft_tokens > 0
    assert 0 < usage.accepted_tokens <= usage.draft_tokens
    assert off.finished.usage.draft_tokens == 0

    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as sdk:
        completion = sdk.completions.create(
            model=MODEL_NAME,
            prompt=PROMPT,
            max_tokens=40,
            temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        plain = sdk.completions.create(
            model=MODEL_NAME,
            prompt=PROMPT,
            max_tokens=40,
            temperature=0.0,
            extra_body={"ignore_eos": True, "disable_speculation": True},
        )
    assert plain.usage is not None and plain.usage.completion_tokens_details
    assert plain.usage.completion_tokens_details.accepted_prediction_tokens == 0
    assert plain.usage.completion_tokens_details.rejected_prediction_tokens == 0
    assert completion.usage is not None and completion.usage.completion_tokens_details
    details = completion.usage.completion_tokens_details
    # The same greedy request as over gRPC: the same drafts, accepted and rejected.
    assert details.accepted_prediction_tokens == usage.accepted_tokens
    assert details.rejected_prediction_tokens == usage.draft_tokens - usage.accepted_tokens

    drafts, accepted = (a - b for a, b in zip(_spec_metrics(server), before, strict=True))
    assert drafts == 2 * usage.draft_tokens
    assert accepted == 2 * usage.accepted_tokens
