"""Speculative decoding: greedy and seeded output equal decoding without it, for both drafters,
batched, alone and under preemption; unseeded sampling keeps the target's distribution; the
final output counts drafts; bad configuration is refused by name."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cluster.demo_model import write_demo_model
from tests.worker.engine_helpers import make_engine, run_all, tokens_of
from worker.engine import Engine
from worker.errors import ModelLoadError
from worker.messages import RequestOutput
from worker.sampling_params import SamplingParams
from worker.spec_decode import DRAFTED_BY_MODEL

GREEDY = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
# Prompts that repeat themselves, where prompt lookup finds drafts, and one that does not.
PROMPTS: dict[str, list[int] | str] = {
    **{f"loop{i}": list(range(200 + 7 * i, 230 + 7 * i)) * 3 for i in range(3)},
    "prose": "A prompt with no repeated phrase in it at all, only words once",
}


@pytest.fixture(scope="module")
def other_draft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A draft with the demo model's vocabulary and other weights: it is mostly wrong, so
    rejections and the tokens that replace them are exercised on every step."""
    path = tmp_path_factory.mktemp("models") / "draft-seed-1"
    write_demo_model(path, preset="tiny", seed=1)
    return path


def _drafters(demo: Path, other: Path) -> dict[str, dict[str, Any]]:
    return {
        "prompt_lookup": {"speculative_method": "prompt_lookup"},
        "draft_same": {"speculative_method": "draft_model", "draft_model": demo},
        "draft_other": {"speculative_method": "draft_model", "draft_model": other},
    }


def _finals(outputs: dict[str, list[RequestOutput]]) -> dict[str, RequestOutput]:
    return {rid: outs[-1] for rid, outs in outputs.items()}


@pytest.mark.parametrize("drafter", ["prompt_lookup", "draft_same", "draft_other"])
def test_greedy_output_equals_decoding_without_speculation(
    demo_model_dir: Path, other_draft_dir: Path, drafter: str
) -> None:
    config = _drafters(demo_model_dir, other_draft_dir)[drafter]
    want = run_all(make_engine(demo_model_dir), PROMPTS, GREEDY)
    batched = run_all(make_engine(demo_model_dir, **config), PROMPTS, GREEDY)
    alone = run_all(make_engine(demo_model_dir, **config), {"loop1": PROMPTS["loop1"]}, GREEDY)
    for rid in PROMPTS:
        assert tokens_of(batched[rid]) == tokens_of(want[rid]), rid
    assert tokens_of(alone["loop1"]) == tokens_of(want["loop1"])
    finals = _finals(batched)
    proposed = sum(f.num_draft_tokens for f in finals.values())
    accepted = sum(f.num_accepted_tokens for f in finals.values())
    assert proposed > 0
    assert 0 <= accepted <= proposed
    if drafter == "draft_same":  # the draft is the target: every draft is accepted
        assert accepted == proposed
    if drafter == "draft_other":  # a wrong draft: rejections happened, output still equal
        assert accepted < proposed


def test_greedy_output_equals_decoding_without_speculation_under_preemption(
    demo_model_dir: Path, other_draft_dir: Path
) -> None:
    prompts = {f"p{i}": list(range(300 + 11 * i, 340 + 11 * i)) * 2 for i in range(6)}
    params = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    want = run_all(make_engine(demo_model_dir), prompts, params)
    for config in _drafters(demo_model_dir, other_draft_dir).values():
        # 6 requests of up to 128 tokens in 30 blocks of 16: they cannot all stay.
        engine = make_engine(demo_model_dir, num_kv_blocks=30, **config)
        got = run_all(engine, prompts, params)
        assert engine.scheduler.num_preemptions > 0
        for rid in prompts:
            assert tokens_of(got[rid]) == tokens_of(want[rid]), (config, rid)


@pytest.mark.parametrize("drafter", ["prompt_lookup", "draft_other"])
def test_seeded_sampling_equals_sampling_without_speculation(
    demo_model_dir: Path, other_draft_dir: Path, drafter: str
) -> None:
    """A position's noise comes from (seed, position), verified as a draft or not."""
    config = _drafters(demo_model_dir, other_draft_dir)[drafter]
    params = SamplingParams(max_tokens=32, temperature=0.8, top_k=4, seed=5, ignore_eos=True)
    want = run_all(make_engine(demo_model_dir), PROMPTS, params)
    got = run_all(make_engine(demo_model_dir, **config), PROMPTS, params)
    for rid in PROMPTS:
        assert tokens_of(got[rid]) == tokens_of(want[rid]), rid
    assert sum(f.num_draft_tokens for f in _finals(got).values()) > 0


def test_stops_inside_accepted_drafts_end_the_request_there(demo_model_dir: Path) -> None:
    """A stop token or max_tokens reached among accepted drafts ends the output at it."""
    want = tokens_of(run_all(make_engine(demo_model_dir), PROMPTS, GREEDY)["loop0"])
    stop = want[9]
    cut = want[: want.index(stop) + 1]
    config = {"speculative_method": "draft_model", "draft_model": demo_model_dir}
    for params in (
        SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, stop_token_ids=(stop,)),
        SamplingParams(max_tokens=len(cut), temperature=0.0, ignore_eos=True),
    ):
        outputs = run_all(make_engine(demo_model_dir, **config), {"r": PROMPTS["loop0"]}, params)
        assert tokens_of(outputs["r"]) == cut


def test_verified_drafts_are_not_counted_as_prefill(demo_model_dir: Path) -> None:
    """The prefill rate a replica measures (and refuses overload by) counts prompt tokens only."""
    engine = make_engine(
        demo_model_dir, speculative_method="draft_model", draft_model=demo_model_dir
    )
    engine.add_request(engine.make_request("r", PROMPTS["loop0"], GREEDY))
    engine.step()  # the prompt, the first token, then drafts for the next step
    (request,) = engine.scheduler.running
    batch = engine.scheduler.schedule()
    (item,) = batch.scheduled
    assert item.num_drafts == len(request.draft_token_ids) == 4
    assert batch.num_prefill_tokens == 0


def test_drafts_the_budget_leaves_out_are_not_scheduled_in_a_later_batch(
    demo_model_dir: Path,
) -> None:
    """With batches in flight (pipeline parallelism), a request whose drafts the token budget
    cut is not scheduled again before its step returns: the rest of its drafts are dropped."""
    engine = make_engine(
        demo_model_dir,
        speculative_method="draft_model",
        draft_model=demo_model_dir,
        max_num_batched_tokens=3,
    )
    engine.add_request(engine.make_request("r", [5, 6], GREEDY))
    engine.step()  # the prompt, the first token, then four drafts for the next step
    (request,) = engine.scheduler.running
    first = engine.scheduler.schedule()
    assert [(item.num_new_tokens, item.num_drafts) for item in first.scheduled] == [(3, 2)]
    assert request.draft_token_ids == [DRAFTED_BY_MODEL] * 2
    assert not engine.scheduler.schedule().scheduled  # a second batch, this one in flight


def test_a_request_can_turn_speculation_off(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir, speculative_method="prompt_lookup")
    off = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, speculate=False)
    on = run_all(engine, {"on": PROMPTS["loop0"]}, GREEDY)
    outputs = run_all(engine, {"off": PROMPTS["loop0"]}, off)
    assert _finals(outputs)["off"].num_draft_tokens == 0
    assert _finals(on)["on"].num_draft_tokens > 0
    assert tokens_of(outputs["off"]) == tokens_of(on["on"])


def _chi_square(
    observed: Counter[tuple[int, ...]], expected: dict[tuple[int, ...], float]
) -> float:
    total = sum(observed.values())
    assert set(observed) <= set(expected), "sampled a sequence the target cannot produce"
    return sum((observed[cell] - total * p) ** 2 / (total * p) for cell, p in expected.items())


def test_verified_sampling_keeps_the_targets_distribution(demo_model_dir: Path) -> None:
    """Sample three tokens with top-k 2 (eight possible sequences) many times, drafting with
    the target's own greedy choice (accepted about as often as it is sampled): the second
    token is a verified draft's position, and the third was sampled after
    it, kept only if the draft was accepted. The sequences' frequencies must fit the target's
    own probabilities (its log-probabilities without speculation)."""
    prompt = "The distribution of sampled tokens stays the target's"
    params = SamplingParams(max_tokens=3, temperature=1.0, top_k=2, ignore_eos=True)
    config = {"speculative_method": "draft_model", "draft_model": demo_model_dir}
    engine = make_engine(demo_model_dir, seed=3, **config)
    outputs = run_all(engine, {f"t{i}": prompt for i in range(800)}, params)
    sequences = Counter(tuple(tokens_of(outs)) for outs in outputs.values())
    finals = _finals(outputs).values()
    assert all(f.num_draft_tokens == 1 for f in finals)
    assert 0 < sum(f.num_accepted_tokens for f in finals) < len(finals)  # both paths taken

    # The exact probabilities: top-2 log-probabilities renormalized, at each position.
    exact = make_engine(demo_model_dir)
    prefix = exact.make_request("p", prompt, params).prompt_token_ids
    expected: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(3):
        expected = {
            (*seq, token): p * q
            for seq, p in expected.items()
            for token, q in _top2(exact, [*prefix, *seq]).items()
        }
    # 7 degrees of freedom: 24.3 is exceeded with probability 0.001 when the fit is exact.
    assert _chi_square(sequences, expected) < 24.3


def _top2(engine: Engine, prompt: list[int]) -> dict[int, float]:
    probe = SamplingParams(max_tokens=1, temperature=0.0, logprobs=2)
    outputs = run_all(engine, {"probe": prompt}, probe)["probe"]
    (logprobs,) = [lp for out in outputs for lp in out.logprobs or []]
    weights = {token: math.exp(lp) for token, lp in logprobs.top}
    total = sum(weights.values())
    return {token: w / total for token, w in weights.items()}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"speculative_method": "medusa"}, "speculative_method"),
        (
            {"speculative_method": "prompt_lookup", "num_speculative_tokens": 0},
            "num_speculative_tokens",
        ),
        ({"speculative_method": "prompt_lookup", "prompt_lookup_min": 5}, "prompt_lookup_min"),
        ({"speculative_method": "draft_model"}, "draft_model"),
        ({"speculative_method": "prompt_lookup", "async_scheduling": True}, "async_scheduling"),
        (
            {
                "speculative_method": "draft_model",
                "draft_model": Path("d"),
                "tensor_parallel_size": 2,
            },
            "single-rank",
        ),
    ],
)
def test_unsupported_configurations_are_refused_by_name(
    demo_model_dir: Path, overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        make_engine(demo_model_dir, **overrides)


def test_a_draft_model_of_another_vocabulary_is_refused(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    draft = tmp_path / "other-vocab"
    write_demo_model(draft, preset="tiny", seed=2)
    config = (draft / "config.json").read_text()
    (draft / "config.json").write_text(config.replace('"vocab_size": 8192', '"vocab_size": 8000'))
    with pytest.raises(ModelLoadError, match="vocabulary"):
        make_engine(demo_model_dir, speculative_method="draft_model", draft_model=draft)
