"""Seeded sampling, filters, stop conditions and logprobs, through the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.engine_helpers import make_engine, run_all, text_of, tokens_of
from worker.engine import Engine
from worker.sampler import Sampler
from worker.sampling_params import SamplingParams

SEEDED = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=1234, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> Engine:
    return make_engine(demo_model_dir)


def test_seeded_sampling_does_not_depend_on_batch(engine: Engine) -> None:
    alone = tokens_of(run_all(engine, {"s": "Once upon a time"}, SEEDED)["s"])
    noisy = SamplingParams(max_tokens=30, temperature=1.0, ignore_eos=True)
    for i in range(3):
        engine.add_request(engine.make_request(f"noise{i}", f"Other prompt {i} " * (i + 1), noisy))
    crowded = tokens_of(run_all(engine, {"s2": "Once upon a time"}, SEEDED)["s2"])
    assert crowded == alone
    other_seed = SamplingParams(
        max_tokens=24, temperature=0.9, top_p=0.95, seed=99, ignore_eos=True
    )
    assert tokens_of(run_all(engine, {"s3": "Once upon a time"}, other_seed)["s3"]) != alone


def test_top_k_one_is_greedy(engine: Engine) -> None:
    greedy = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    top1 = SamplingParams(max_tokens=16, temperature=1.5, top_k=1, seed=3, ignore_eos=True)
    outs = run_all(engine, {"g": "Rain again", "k": "Rain again"}, greedy)
    g = tokens_of(outs["g"])
    assert tokens_of(run_all(engine, {"k": "Rain again"}, top1)["k"]) == g


def test_filters_keep_only_allowed_tokens() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    sampler = Sampler()
    seen: set[int] = set()
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        params = SamplingParams(temperature=1.0, top_k=3, top_p=0.9, seed=seed)
        seen.add(sampler.sample(logits, [params], [gen])[0].token_id)
    # top_k=3 keeps {0,1,2}; top_p=0.9 then drops 2 (mass before it is 0.665 + 0.245 >= 0.9).
    assert seen == {0, 1}
    gen = torch.Generator().manual_seed(0)
    min_p = SamplingParams(temperature=1.0, min_p=0.5, seed=0)
    assert {sampler.sample(logits, [min_p], [gen])[0].token_id for _ in range(50)} == {0}


def test_stop_string_is_never_streamed(engine: Engine) -> None:
    free = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    full = text_of(run_all(engine, {"f": "The weather today"}, free)["f"])
    stop = full[10:14]
    assert stop.strip(), "need a non-blank stop string from the greedy text"
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, stop=(stop,))
    outputs = run_all(engine, {"s": "The weather today"}, params)["s"]
    streamed = ""
    for out in outputs:
        streamed += out.text
        assert stop not in streamed
    assert streamed == full[: full.index(stop)]
    assert outputs[-1].finish_reason == "stop" and outputs[-1].stop_reason == stop


def test_stop_token_id_finishes_with_that_token(engine: Engine) -> None:
    free = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    tokens = tokens_of(run_all(engine, {"f": "Kitchen notes"}, free)["f"])
    target = tokens[5]
    params = SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=(target,))
    outputs = run_all(engine, {"s": "Kitchen notes"}, params)["s"]
    got = tokens_of(outputs)
    assert got == tokens[: tokens.index(target) + 1]
    assert outputs[-1].stop_reason == target


def test_incremental_text_equals_full_decode(engine: Engine) -> None:
    params = SamplingParams(max_tokens=48, temperature=1.0, seed=7, ignore_eos=True)
    outputs = run_all(engine, {"t": "naïve café — 東京 says"}, params)["t"]
    assert text_of(outputs) == engine.tokenizer.decode(tokens_of(outputs))


def test_logprobs_are_top_n_of_a_distribution(engine: Engine) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0, logprobs=3, ignore_eos=True)
    outputs = run_all(engine, {"l": "Numbers: 1, 2, 3"}, params)["l"]
    logprobs = [lp for out in outputs for lp in (out.logprobs or [])]
    assert len(logprobs) == 4
    for lp, token in zip(logprobs, tokens_of(outputs), strict=True):
        assert len(lp.top) == 3
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True)
        assert lp.top[0][0] == token  # greedy picks the most likely token
        assert lp.token_logprob == pytest.approx(values[0])
        assert sum(torch.tensor(values).exp()) <= 1.0 + 1e-5
