"""Every bad request is refused with an error naming the problem; other requests carry on."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, tokens_of
from worker.engine import Engine
from worker.errors import DuplicateRequestError, InvalidRequestError, ModelLoadError
from worker.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> Engine:
    return make_engine(demo_model_dir, max_model_len=256)


CASES = [
    ("prompt", "", SamplingParams(), "is empty"),
    ("prompt", [], SamplingParams(), "is empty"),
    ("prompt", [1] * 256, SamplingParams(), "context of 256"),
    ("max_tokens", "hi", SamplingParams(max_tokens=0), "at least 1"),
    ("max_tokens", "hi", SamplingParams(max_tokens=10_000), "exceed the model's context"),
    ("temperature", "hi", SamplingParams(temperature=-0.5), ">= 0"),
    ("temperature", "hi", SamplingParams(temperature=float("nan")), ">= 0"),
    ("top_p", "hi", SamplingParams(top_p=0.0), "(0, 1]"),
    ("top_p", "hi", SamplingParams(top_p=1.5), "(0, 1]"),
    ("top_k", "hi", SamplingParams(top_k=-2), "-1 (off)"),
    ("prompt_token_ids", [5, 10**6], SamplingParams(), "outside the vocabulary"),
    ("prompt_token_ids", [-1], SamplingParams(), "outside the vocabulary"),
    ("stop", "hi", SamplingParams(stop=tuple(f"s{i}" for i in range(17))), "at most 16"),
    ("stop", "hi", SamplingParams(stop=("x" * 257,)), "at most 256"),
    ("stop", "hi", SamplingParams(stop=("",)), "empty"),
    ("stop_token_ids", "hi", SamplingParams(stop_token_ids=(10**7,)), "outside the vocabulary"),
    ("logprobs", "hi", SamplingParams(logprobs=21), "[0, 20]"),
    ("min_p", "hi", SamplingParams(min_p=2.0), "[0, 1]"),
]


@pytest.mark.parametrize(("field", "prompt", "params", "message"), CASES)
def test_bad_request_names_the_field(
    engine: Engine,
    field: str,
    prompt: str | list[int],
    params: SamplingParams,
    message: str,
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        engine.make_request("bad", prompt, params)
    assert info.value.field == field
    assert message in str(info.value)


def test_duplicate_request_id_is_refused_and_original_finishes(engine: Engine) -> None:
    engine.add_request(engine.make_request("dup", "first", GREEDY_32))
    with pytest.raises(DuplicateRequestError, match="'dup' is already running"):
        engine.add_request(engine.make_request("dup", "second", GREEDY_32))
    first = tokens_of(run_all(engine, {}, GREEDY_32)["dup"])
    assert first == tokens_of(run_all(engine, {"again": "first"}, GREEDY_32)["again"])
    engine.check_integrity()
    assert engine.kv.pool.num_free == engine.num_blocks


def test_bad_requests_do_not_disturb_running_ones(engine: Engine) -> None:
    expected = tokens_of(run_all(engine, {"a": "steady request"}, GREEDY_32)["a"])
    engine.add_request(engine.make_request("b", "steady request", GREEDY_32))
    got: list[int] = []
    while engine.has_unfinished():
        for field, prompt, params, _ in CASES:
            with pytest.raises(InvalidRequestError):
                engine.make_request(f"bad-{field}", prompt, params)
        for out in engine.step():
            got += out.token_ids
    assert got == expected
    engine.check_integrity()


def test_request_larger_than_the_whole_cache_is_refused(demo_model_dir: Path) -> None:
    small = make_engine(demo_model_dir, num_kv_blocks=4)
    with pytest.raises(InvalidRequestError, match="need 5 KV blocks; the cache has 4"):
        small.make_request("big", [1] * 60, SamplingParams(max_tokens=10))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tensor_parallel_size": 3}, "num_attention_heads"),
        ({"pipeline_parallel_size": 5}, "num_hidden_layers"),
        ({"pipeline_parallel_size": 2, "layer_split": (1, 2)}, "layer_split"),
        ({"max_model_len": 10**6}, "exceeds the model's context"),
    ],
)
def test_bad_engine_config_fails_at_start_up(
    demo_model_dir: Path, overrides: dict[str, object], message: str
) -> None:
    # Refused while validating, before any rank (or Ray) is started.
    with pytest.raises(ModelLoadError, match=message):
        make_engine(demo_model_dir, **overrides)


@pytest.mark.parametrize(
    "error", [InvalidRequestError("top_p", "must be in (0, 1]"), DuplicateRequestError("r1")]
)
def test_request_errors_survive_pickling(error: InvalidRequestError) -> None:
    # Replicas raise them in another process; the router maps them by type and field.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.field, str(copy)) == (error.field, str(error))
