"""Beam search in the engine: the same beams as a brute-force search that enumerates every
continuation, and as transformers' ``generate(num_beams=...)``, on the fp32 demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from tests.worker.engine_helpers import make_engine
from tests.worker.groups_helpers import run_requests, sequences_of
from worker.errors import InvalidRequestError
from worker.sampling_params import SamplingParams

PROMPT = "Beam search keeps the likeliest continuations of this prompt"


@pytest.fixture(scope="module")
def hf_model(demo_model_dir: Path) -> Any:
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(
        demo_model_dir, dtype=torch.float32
    )
    return model.eval()


def brute_force_beams(
    model: Any, prompt: list[int], width: int, steps: int
) -> list[tuple[list[int], float]]:
    """Every live beam's every next token scored by recomputing the whole sequence, the best
    ``width`` kept; no stop token, so all beams end at ``steps`` tokens. Best first."""
    beams: list[tuple[list[int], float]] = [([], 0.0)]
    with torch.inference_mode():
        for _ in range(steps):
            candidates = []
            for tokens, score in beams:
                logits = model(torch.tensor([prompt + tokens])).logits[0, -1]
                logprobs = torch.log_softmax(logits.double(), dim=-1)
                candidates += [([*tokens, t], score + float(lp)) for t, lp in enumerate(logprobs)]
            candidates.sort(key=lambda c: c[1], reverse=True)
            beams = candidates[:width]
    return beams


@pytest.mark.parametrize("width, steps", [(2, 4), (3, 5), (4, 6)])
def test_beams_equal_a_brute_force_search_of_every_continuation(
    demo_model_dir: Path, hf_model: Any, width: int, steps: int
) -> None:
    engine = make_engine(demo_model_dir)
    prompt = engine.tokenizer.encode(PROMPT)
    params = SamplingParams(
        max_tokens=steps, temperature=0.0, beam_width=width, n=width, ignore_eos=True,
        length_penalty=0.0,
    )  # fmt: skip
    got = sequences_of(run_requests(engine, {"beam": (prompt, params)}), "beam")
    want = brute_force_beams(hf_model, prompt, width, steps)
    assert [out.token_ids for out in got] == [tokens for tokens, _ in want]
    for out, (_, score) in zip(got, want, strict=True):
        assert out.score == pytest.approx(score, abs=1e-3)
        assert out.finish_reason == "length"
    assert engine.kv.pool.num_free == engine.num_blocks  # every beam's blocks came back


SETTINGS = {
    "width 2": dict(beam_width=2, n=1, max_tokens=6),
    "width 4, n 3": dict(beam_width=4, n=3, max_tokens=7),
    "length penalty 2": dict(beam_width=3, n=3, max_tokens=6, length_penalty=2.0),
    "early stopping": dict(beam_width=3, n=2, max_tokens=8, early_stopping=True),
    "stop token": dict(beam_width=3, n=3, max_tokens=8),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_beams_equal_transformers_generate(demo_model_dir: Path, hf_model: Any, name: str) -> None:
    settings: dict[str, Any] = SETTINGS[name]
    engine = make_engine(demo_model_dir)
    prompt = engine.tokenizer.encode(PROMPT)
    stop = None
    if name == "stop token":  # a token the beams choose early, so that some of them stop
        first = sequences_of(
            run_requests(make_engine(demo_model_dir), {"probe": (prompt, SamplingParams(
                max_tokens=3, temperature=0.0, beam_width=3, n=3, ignore_eos=True))}),
            "probe",
        )  # fmt: skip
        stop = first[1].token_ids[1]
    params = SamplingParams(
        temperature=0.0, ignore_eos=True, stop_token_ids=() if stop is None else (stop,),
        **settings,
    )  # fmt: skip
    got = sequences_of(run_requests(engine, {"beam": (prompt, params)}), "beam")
    with torch.inference_mode():
        hf = hf_model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            num_beams=settings["beam_width"],
            num_return_sequences=settings["n"],
            max_new_tokens=settings["max_tokens"],
            length_penalty=settings.get("length_penalty", 1.0),
            early_stopping=settings.get("early_stopping", False),
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=-1,
            output_scores=True,
            return_dict_in_generate=True,
        )
    want = [[t for t in seq[len(prompt) :].tolist() if t != -1] for seq in hf.sequences]
    assert [out.token_ids for out in got] == want
    assert [out.score for out in got] == pytest.approx(hf.sequences_scores.tolist(), abs=1e-3)
    if stop is not None:
        assert any(out.finish_reason == "stop" and out.stop_reason == stop for out in got)
    assert engine.kv.pool.num_free == engine.num_blocks


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(beam_width=2, temperature=0.7), "temperature"),
        (dict(beam_width=2, n=3, temperature=0.0), "n"),
        (dict(beam_width=2, temperature=0.0, stop=("x",)), "stop"),
        (dict(beam_width=2, temperature=0.0, logprobs=2), "logprobs"),
        (dict(beam_width=17, temperature=0.0), "beam_width"),
        (dict(n=17), "n"),
        (dict(n=2, length_penalty=0.5), "length_penalty"),
        (dict(beam_width=2, temperature=0.0, length_penalty=float("nan")), "length_penalty"),
    ],
)
def test_bad_combinations_are_refused_naming_the_field(
    demo_model_dir: Path, fields: dict[str, Any], named: str
) -> None:
    engine = make_engine(demo_model_dir)
    with pytest.raises(InvalidRequestError) as refused:
        engine.make_request("bad", PROMPT, SamplingParams(max_tokens=4, **fields))
    assert refused.value.field == named
