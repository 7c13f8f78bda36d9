"""Generate over real gRPC: output parity with the engine, cancellation, deadlines, Abort."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerateStream, GenerationClient
from tests.router.grpc_api.conftest import RunningServer
from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, text_of, tokens_of

LONG = {"max_tokens": 1500, "temperature": 0.0, "ignore_eos": True}


def _drain(stream: GenerateStream) -> list[pb.GenerateResponse]:
    return list(stream)


def _greedy_32(client: GenerationClient, prompt: str | list[int]) -> list[pb.GenerateResponse]:
    return _drain(client.generate(prompt, max_tokens=32, temperature=0.0, ignore_eos=True))


def test_streamed_tokens_and_text_equal_the_engines_own_output(
    client: GenerationClient, server: RunningServer, demo_model_dir: Path
) -> None:
    prompt = "The gRPC front door streams"
    expected = run_all(make_engine(demo_model_dir), {"a": prompt}, GREEDY_32)["a"]
    responses = _greedy_32(client, prompt)
    assert [t for r in responses for t in r.token_ids] == tokens_of(expected)
    assert "".join(r.text for r in responses) == text_of(expected)
    assert [r.HasField("finished") for r in responses] == [False] * (len(responses) - 1) + [True]
    finished = responses[-1].finished
    assert finished.reason == pb.FINISH_REASON_LENGTH
    assert finished.usage.completion_tokens == 32
    assert finished.usage.prompt_tokens == len(client.tokenize(prompt))
    assert finished.timings.time_to_first_token_s > 0
    assert len({r.request_id for r in responses}) == 1 and responses[0].request_id
    server.wait_until_idle()


def test_token_id_prompt_matches_text_prompt_and_reuses_its_cached_blocks(
    client: GenerationClient, server: RunningServer
) -> None:
    prompt = "A prompt long enough to fill at least two KV blocks of sixteen tokens each, twice."
    by_text = _greedy_32(client, prompt)
    by_ids = _greedy_32(client, client.tokenize(prompt))
    assert [r.token_ids for r in by_ids] == [r.token_ids for r in by_text]
    assert by_ids[-1].finished.usage.cached_tokens > 0
    server.wait_until_idle()


def test_stop_string_is_reported_as_the_matched_stop(client: GenerationClient) -> None:
    text = "".join(r.text for r in _greedy_32(client, "Stop somewhere"))
    stop = text[5:8]
    responses = _drain(client.generate("Stop somewhere", stop=[stop], temperature=0.0))
    finished = responses[-1].finished
    assert finished.reason == pb.FINISH_REASON_STOP
    assert finished.stop_string == stop
    assert stop not in "".join(r.text for r in responses)


def test_cancel_mid_stream_aborts_the_request_and_frees_its_blocks(
    client: GenerationClient, server: RunningServer
) -> None:
    stream = client.generate("Cancel me halfway", **LONG)
    deltas = iter(stream)
    next(deltas)
    next(deltas)
    stream.cancel()
    with pytest.raises(grpc.RpcError) as err:
        list(deltas)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    server.wait_until_idle()


def test_deadline_aborts_the_request_and_frees_its_blocks(
    client: GenerationClient, server: RunningServer
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _drain(client.generate("Too slow for its deadline", timeout=0.3, **LONG))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    server.wait_until_idle()


def test_abort_rpc_ends_the_stream_with_reason_abort(
    client: GenerationClient, server: RunningServer
) -> None:
    deltas = iter(client.generate("Abort me", request_id="abort-me", **LONG))
    next(deltas)
    assert client.abort("abort-me")
    rest = list(deltas)
    assert rest[-1].finished.reason == pb.FINISH_REASON_ABORT
    assert not client.abort("abort-me")
    server.wait_until_idle()


def test_full_queue_gives_resource_exhausted_and_spares_admitted_requests(
    client: GenerationClient, server: RunningServer
) -> None:
    limit = server.backend.max_queued_requests
    streams = [client.generate(f"Queued {i}", **LONG) for i in range(limit)]
    running = [iter(s) for s in streams]
    for deltas in running:
        next(deltas)  # admitted
    with pytest.raises(grpc.RpcError) as err:
        _greedy_32(client, "One too many")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for deltas in running:
        assert next(deltas).token_ids  # still streaming
    for stream in streams:
        stream.cancel()
    server.wait_until_idle()
    assert _greedy_32(client, "Room again")[-1].finished.usage.completion_tokens == 32


def _by_index(responses: list[pb.GenerateResponse]) -> dict[int, list[pb.GenerateResponse]]:
    streams: dict[int, list[pb.GenerateResponse]] = {}
    for response in responses:
        streams.setdefault(response.index, []).append(response)
    return streams


def test_n_samples_stream_by_index_and_equal_separately_seeded_requests(
    client: GenerationClient, server: RunningServer
) -> None:
    prompt = "Three samples of one prompt"
    sampling = {"max_tokens": 12, "temperature": 0.9, "ignore_eos": True}
    streams = _by_index(_drain(client.generate(prompt, n=3, seed=5, **sampling)))
    assert sorted(streams) == [0, 1, 2]
    for index, responses in streams.items():
        # Each sequence ends with its own finished message, after all of its tokens.
        assert [r.HasField("finished") for r in responses][-1]
        assert responses[-1].finished.usage.completion_tokens == 12
        alone = _drain(client.generate(prompt, seed=5 + index, **sampling))
        assert [t for r in responses for t in r.token_ids] == [
            t for r in alone for t in r.token_ids
        ]
    server.wait_until_idle()


def test_beam_search_returns_the_best_beams_with_their_scores(
    client: GenerationClient, server: RunningServer
) -> None:
    responses = _drain(
        client.generate(
            "Beams over gRPC", beam_width=3, n=2, max_tokens=6, temperature=0.0, ignore_eos=True
        )
    )
    streams = _by_index(responses)
    assert sorted(streams) == [0, 1]
    scores = [streams[i][-1].finished.score for i in (0, 1)]
    assert scores[0] >= scores[1] and all(s < 0 for s in scores)
    assert all(streams[i][-1].finished.reason == pb.FINISH_REASON_LENGTH for i in (0, 1))
    with pytest.raises(grpc.RpcError) as refused:
        _drain(client.generate("Beams", beam_width=3, temperature=0.5))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "temperature" in (refused.value.details() or "")
    server.wait_until_idle()
