"""What a replica tells routers about its load, its measured prefill rate included."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.engine_helpers import GREEDY_32, make_engine, run_all
from worker.load_report import PrefillRateMeter


def test_the_meter_averages_prefill_steps_and_ignores_decode_steps() -> None:
    meter = PrefillRateMeter(min_tokens=64, weight=0.5)
    meter.observe(8, 0.001)  # a decode step: says nothing about the prefill rate
    assert meter.tokens_per_s == 0.0
    meter.observe(1000, 0.5)
    assert meter.tokens_per_s == 2000.0
    meter.observe(1000, 0.25)
    assert meter.tokens_per_s == pytest.approx(3000.0)


def test_an_engine_reports_the_prefill_rate_it_measured(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir)
    assert engine.load_report().prefill_tokens_per_s == 0.0
    run_all(engine, {"a": list(range(10, 300))}, GREEDY_32)
    assert engine.load_report().prefill_tokens_per_s > 0.0


def test_a_prompt_mid_prefill_still_counts_as_prefill_work(demo_model_dir: Path) -> None:
    # A chunked prompt is running after its first chunk, but most of its prefill is still
    # ahead of the next arrival: a router that saw 0 here would pile requests onto it.
    # One chunk per step: without running ahead, which schedules the next chunk at once.
    engine = make_engine(demo_model_dir, max_num_batched_tokens=64, async_scheduling=False)
    prompt = list(range(10, 300))
    engine.add_request(engine.make_request("long", prompt, GREEDY_32))
    assert engine.load_report().prefill_tokens == len(prompt)
    engine.step()
    report = engine.load_report()
    assert (report.num_waiting, report.num_running) == (0, 1)
    assert report.prefill_tokens == len(prompt) - 64
