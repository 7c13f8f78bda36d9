"""Generate through the whole path: gRPC router, Serve request router, engine replicas."""

from __future__ import annotations

from pathlib import Path

from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerationClient
from tests.cluster.serve.conftest import Fleet
from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, text_of, tokens_of


def _greedy_32(client: GenerationClient, prompt: str | list[int]) -> list[pb.GenerateResponse]:
    return list(client.generate(prompt, max_tokens=32, temperature=0.0, ignore_eos=True))


def test_streamed_output_equals_the_engines_own(
    client: GenerationClient, fleet: Fleet, demo_model_dir: Path
) -> None:
    prompts = {"a": "Replicas stream their tokens back", "b": "through Serve handles, and"}
    expected = run_all(make_engine(demo_model_dir), dict(prompts), GREEDY_32)
    for rid, prompt in prompts.items():
        responses = _greedy_32(client, prompt)
        assert [t for r in responses for t in r.token_ids] == tokens_of(expected[rid])
        assert "".join(r.text for r in responses) == text_of(expected[rid])
        finished = responses[-1].finished
        assert finished.reason == pb.FINISH_REASON_LENGTH
        assert finished.replica in fleet.replica_ids()
        assert finished.usage.prompt_tokens == len(client.tokenize(prompt))
    fleet.wait_until_idle()
