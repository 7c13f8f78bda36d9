"""The engine's greedy tokens and log-probabilities equal Hugging Face transformers'."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers

from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, tokens_of
from worker.sampling_params import SamplingParams

PROMPT = "The router sends each request to the replica that already holds its prefix"
STEPS = 40


def _hf_greedy(
    model_dir: Path, prompt_ids: list[int], steps: int
) -> tuple[list[int], torch.Tensor]:
    """HF's greedy tokens and the log-softmax of its logits at each generated position."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    tokens = out.sequences[0, len(prompt_ids) :].tolist()
    logprobs = torch.log_softmax(torch.cat(out.logits).float(), dim=-1)
    return tokens, logprobs


def _assert_matches_hf(model_dir: Path, prompt_ids: list[int]) -> None:
    hf_tokens, hf_logprobs = _hf_greedy(model_dir, prompt_ids, STEPS)
    engine = make_engine(model_dir, dtype="float32")
    params = SamplingParams(max_tokens=STEPS, temperature=0.0, ignore_eos=True, logprobs=5)
    (outputs,) = run_all(engine, {"r": prompt_ids}, params).values()
    assert tokens_of(outputs) == hf_tokens
    ours = [lp for out in outputs for lp in (out.logprobs or [])]
    assert len(ours) == STEPS
    for step, lp in enumerate(ours):
        ids = [i for i, _ in lp.top]
        values = torch.tensor([v for _, v in lp.top])
        torch.testing.assert_close(values, hf_logprobs[step, ids], rtol=0, atol=1e-4)
        assert lp.token_logprob == pytest.approx(
            float(hf_logprobs[step, hf_tokens[step]]), abs=1e-4
        )


def test_demo_model_greedy_matches_transformers(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir)
    _assert_matches_hf(demo_model_dir, engine.tokenizer.encode(PROMPT))


def test_qwen3_style_model_matches_transformers(demo_model_dir: Path, tmp_path: Path) -> None:
    vocab = transformers.AutoConfig.from_pretrained(demo_model_dir).vocab_size
    config = transformers.Qwen3Config(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=48,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(1)
    model = transformers.Qwen3ForCausalLM(config).to(torch.float32)
    for name, param in model.named_parameters():
        if "norm" in name:  # random norms make q/k-norm actually matter
            torch.nn.init.uniform_(param, 0.5, 1.5)
    model.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_model_dir / name, tmp_path / name)
    _assert_matches_hf(tmp_path, list(range(5, 60, 3)))


def test_greedy_tokens_survive_eos_when_ignored(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir)
    (outputs,) = run_all(engine, {"r": PROMPT}, GREEDY_32).values()
    assert len(tokens_of(outputs)) == 32
    assert outputs[-1].finish_reason == "length"
