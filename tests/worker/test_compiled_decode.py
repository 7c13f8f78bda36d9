"""Decode steps compiled by torch.compile (Inductor, on the CPU): the same tokens as eager, two
graphs compiled at start-up and none after, the compiled code found again in Inductor's cache,
and a compilation that fails leaving a working eager engine. On a GPU the CUDA graphs replay
the compiled forward instead: tests/worker/test_cuda_graphs.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from torch._dynamo.utils import counters

from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, tokens_of
from worker.config import EngineConfig
from worker.engine import Engine
from worker.sampling_params import SamplingParams

on_cpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a GPU the CUDA graphs run the compiled forward"
)

PROMPTS: dict[str, list[int] | str] = {
    f"r{i}": f"Prompt {i} wants its own continuation. " * (1 + i % 5) for i in range(12)
}


def _count_compiled_steps(engine: Engine) -> list[int]:
    """How many steps ran the compiled forward, counted as they run."""
    compiled = engine.executor.runner.compiled  # type: ignore[attr-defined]
    assert compiled is not None, "the engine did not compile its decode steps"
    calls = [0]
    run = compiled.run

    def counting(step):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return run(step)

    compiled.run = counting
    return calls


def tokens_of_staggered_run(engine: Engine) -> dict[str, list[int]]:
    """Twelve prompts of five lengths wanting 4 to 26 tokens: the decode batch shrinks from
    twelve sequences to one as they finish."""
    tokens: dict[str, list[int]] = {}
    for i, (rid, prompt) in enumerate(PROMPTS.items()):
        params = SamplingParams(max_tokens=4 + 2 * i, temperature=0.0, ignore_eos=True)
        engine.add_request(engine.make_request(rid, prompt, params))
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
        engine.check_integrity()
    return tokens


@on_cpu
def test_compiled_decode_steps_give_the_eager_tokens_and_compile_nothing_after_start_up(
    demo_model_dir: Path,
) -> None:
    compiled = make_engine(demo_model_dir, torch_compile=True)
    calls = _count_compiled_steps(compiled)
    graphs_before = counters["stats"]["unique_graphs"]
    got = tokens_of_staggered_run(compiled)
    assert got == tokens_of_staggered_run(make_engine(demo_model_dir, enforce_eager=True))
    assert calls[0] >= 25  # every decode step, down to the last sequence's alone
    assert counters["stats"]["unique_graphs"] == graphs_before


@on_cpu
def test_a_restart_finds_the_compiled_code_in_inductors_cache(demo_model_dir: Path) -> None:
    make_engine(demo_model_dir, torch_compile=True)  # compiled, or loaded, and cached
    torch._dynamo.reset()  # what a new process starts with: nothing compiled in memory
    hits = counters["inductor"]["fxgraph_cache_hit"]
    engine = make_engine(demo_model_dir, torch_compile=True)
    assert engine.executor.runner.compiled is not None  # type: ignore[attr-defined]
    assert counters["inductor"]["fxgraph_cache_hit"] >= hits + 2


@on_cpu
def test_a_failed_compilation_is_logged_and_the_engine_serves_eagerly(
    demo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch._dynamo.reset()
    # A C++ compiler that fails, and no cache to find compiled code in instead. Through torch's
    # own config patching: monkeypatching the inductor alias of force_disable_caches leaves the
    # alias broken for every later compilation in the process.
    failing = torch._inductor.config.patch({"cpp.cxx": (None, "false")})
    uncached = torch.compiler.config.patch(force_disable_caches=True)
    with failing, uncached, caplog.at_level(logging.WARNING, logger="worker.engine"):
        engine = make_engine(demo_model_dir, torch_compile=True)
    torch._dynamo.reset()  # nothing half-compiled is left for later tests
    assert engine.executor.runner.compiled is None  # type: ignore[attr-defined]
    assert "decode steps run eagerly: torch.compile failed" in caplog.text
    want = run_all(make_engine(demo_model_dir, enforce_eager=True), PROMPTS, GREEDY_32)
    got = run_all(engine, PROMPTS, GREEDY_32)
    assert {r: tokens_of(o) for r, o in got.items()} == {r: tokens_of(o) for r, o in want.items()}


def test_compilation_is_off_on_a_cpu_by_default_and_with_enforce_eager(tmp_path: Path) -> None:
    config = EngineConfig(model=tmp_path)
    assert not config.compiles_steps("cpu")
    assert config.compiles_steps("cuda")
    assert not EngineConfig(model=tmp_path, enforce_eager=True).compiles_steps("cuda")
    assert EngineConfig(model=tmp_path, torch_compile=True).compiles_steps("cpu")
    with pytest.raises(ValueError, match="torch_compile and enforce_eager"):
        EngineConfig(model=tmp_path, torch_compile=True, enforce_eager=True)
    with pytest.raises(ValueError, match="torch_compile needs a single-rank replica"):
        EngineConfig(model=tmp_path, torch_compile=True, tensor_parallel_size=2)
    assert not EngineConfig(model=tmp_path, tensor_parallel_size=2).compiles_steps("cuda")
