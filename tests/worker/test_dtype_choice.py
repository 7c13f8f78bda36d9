""" "auto" runs bf16 on a CPU only where the processor computes it natively, and a bf16 engine
stays close to the float32 reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.engine_helpers import make_engine, run_all
from tests.worker.test_engine_parity import PROMPT, _hf_greedy
from worker import dtype_choice
from worker.dtype_choice import cpu_has_native_bf16, resolve_dtype
from worker.executor import LocalExecutor, OverlappingExecutor
from worker.sampling_params import SamplingParams


def test_auto_on_cpu_follows_the_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtype_choice, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(dtype_choice, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == "float32"


def test_explicit_dtypes_and_gpus_keep_what_was_asked() -> None:
    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16"
    assert resolve_dtype("auto", "cuda") == "auto"  # the checkpoint's own


def test_native_bf16_detection_agrees_with_the_kernel_flags() -> None:
    flags = Path("/proc/cpuinfo").read_text().split()
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_engine_resolves_auto_and_builds_its_cache_in_that_dtype(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir, dtype="auto")
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert engine.config.dtype == expected
    assert isinstance(engine.executor, LocalExecutor | OverlappingExecutor)
    assert engine.executor.runner.kv_caches[0].dtype == getattr(torch, expected)


def test_bf16_engine_is_close_to_float32_transformers(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir, dtype="bfloat16")
    prompt = engine.tokenizer.encode(PROMPT)
    _, hf_logprobs = _hf_greedy(demo_model_dir, prompt, steps=1)
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
    (outputs,) = run_all(engine, {"r": prompt}, params).values()
    (first,) = [lp for out in outputs for lp in (out.logprobs or [])]
    ids = [i for i, _ in first.top]
    ours = torch.tensor([v for _, v in first.top])
    # bf16 keeps 8 bits of mantissa; over four layers that moves a log-probability by
    # a few thousandths of a nat (0.004 measured), far from this bound.
    torch.testing.assert_close(ours, hf_logprobs[0, ids], rtol=0, atol=0.05)
    assert ids[0] == int(hf_logprobs[0].argmax())
