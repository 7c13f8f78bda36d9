"""Decode CUDA graphs: buckets, and the padded static-buffer forward they record. The padding is
checked on CPU (same buffers, run eagerly); capture and replay need a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernels import PagedAttentionMetadata
from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all, tokens_of
from tests.worker.test_compiled_decode import tokens_of_staggered_run
from worker.cuda_graphs import DecodeGraphs, batch_buckets
from worker.engine import Engine
from worker.step_input import StepInput


def test_buckets_cover_every_batch_size_up_to_the_max() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert batch_buckets(128)[-3:] == [112, 120, 128]
    with pytest.raises(ValueError, match="max_batch"):
        batch_buckets(0)


def _decode_step(engine: Engine, prompts: dict[str, str]) -> StepInput:
    """Run the prompts until a step has only decode rows, and return that step's input."""
    steps: list[StepInput] = []
    runner = engine.executor.runner  # type: ignore[attr-defined]
    execute = runner.execute
    runner.execute = lambda step: (steps.append(step), execute(step))[1]
    for rid, prompt in prompts.items():
        engine.add_request(engine.make_request(rid, prompt, GREEDY_32))
    while not steps or any(q != 1 for q in steps[-1].query_lens):
        engine.step()
    return steps[-1]


def _graphs(engine: Engine, max_batch: int) -> DecodeGraphs:
    runner = engine.executor.runner  # type: ignore[attr-defined]
    return DecodeGraphs(
        runner.model, runner.kv_caches, engine.config.block_size, engine.max_model_len,
        max_batch, torch.device("cpu"),
    )  # fmt: skip


def test_padded_buffers_give_the_steps_own_hidden_states_and_store_nothing_extra(
    demo_model_dir: Path,
) -> None:
    engine = make_engine(demo_model_dir)
    step = _decode_step(engine, {"a": "Three sequences", "b": "decode together", "c": "here."})
    runner = engine.executor.runner  # type: ignore[attr-defined]
    meta = PagedAttentionMetadata(
        query_start_loc=torch.tensor(step.query_start_loc, dtype=torch.int32),
        seq_lens=torch.tensor(step.seq_lens, dtype=torch.int32),
        block_table=torch.tensor(step.block_table, dtype=torch.int32),
        slot_mapping=torch.tensor(step.slot_mapping, dtype=torch.int64),
        query_lens_host=step.query_lens,
        seq_lens_host=step.seq_lens,
        block_size=engine.config.block_size,
    )
    with torch.inference_mode():
        ids, pos = torch.tensor(step.input_ids), torch.tensor(step.positions)
        eager = runner.model(ids, pos, runner.kv_caches, meta)
        before = [cache.clone() for cache in runner.kv_caches]
        graphs = _graphs(engine, max_batch=8)
        bucket = graphs.bucket_for(step)
        assert bucket == 4  # three rows and one of padding
        graphs.load(step, bucket)
        padded = graphs.forward(bucket, [*step.seq_lens, 1])
    torch.testing.assert_close(padded[:3], eager, rtol=1e-5, atol=1e-5)
    # The step's rows rewrite the values they already stored (to rounding: a batch of four
    # multiplies in another order than one of three); the padding row stores nothing.
    for old, new in zip(before, runner.kv_caches, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)


def test_steps_that_cannot_replay_run_eagerly(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir)
    step = _decode_step(engine, {f"r{i}": f"request {i}" for i in range(3)})
    assert _graphs(engine, max_batch=2).bucket_for(step) is None  # more sequences than captured
    wide = StepInput(**{**_fields(step), "block_table": [[0] * 10_000] * 3})
    assert _graphs(engine, max_batch=8).bucket_for(wide) is None  # wider than max_model_len
    prefill = StepInput(**{**_fields(step), "query_lens": [1, 2, 1]})
    assert _graphs(engine, max_batch=8).bucket_for(prefill) is None


def _fields(step: StepInput) -> dict[str, object]:
    return {name: getattr(step, name) for name in StepInput.__slots__}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_graph_decode_gives_the_tokens_of_eager_decode(demo_model_dir: Path) -> None:
    # fp32: padding 5 rows to a bucket of 8 may change cuBLAS's kernel, and in bf16 the demo
    # model's random-weight logits have near-ties that rounding alone can flip.
    prompts: dict[str, list[int] | str] = {f"r{i}": f"Request number {i} says" for i in range(5)}
    graphed = make_engine(demo_model_dir)
    assert graphed.executor.runner.graphs is not None  # type: ignore[attr-defined]
    eager = make_engine(demo_model_dir, enforce_eager=True)
    got, want = run_all(graphed, prompts, GREEDY_32), run_all(eager, prompts, GREEDY_32)
    assert {r: tokens_of(o) for r, o in got.items()} == {r: tokens_of(o) for r, o in want.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_graphs_of_the_compiled_forward_give_the_tokens_of_eager_decode(
    demo_model_dir: Path,
) -> None:
    compiled = make_engine(demo_model_dir, torch_compile=True)
    runner = compiled.executor.runner  # type: ignore[attr-defined]
    assert runner.compiled is not None and runner.graphs is not None
    assert runner.graphs.compiled is runner.compiled
    got = tokens_of_staggered_run(compiled)
    assert got == tokens_of_staggered_run(make_engine(demo_model_dir, enforce_eager=True))
