"""The load generator and its summary on their own: arrivals, workloads, percentiles, goodput,
cost."""

from __future__ import annotations

import math

import pytest

from router.bench_summary import LatencyTargets, summarize
from router.load_test import Timing, Workload, arrival_times


def test_fixed_arrivals_are_evenly_spaced_and_poisson_ones_average_the_rate() -> None:
    assert arrival_times(4.0, 4, poisson=False) == [0.0, 0.25, 0.5, 0.75]
    times = arrival_times(10.0, 5001, poisson=True, seed=1)
    assert times[-1] / 5000 == pytest.approx(0.1, rel=0.05)
    assert times == sorted(times)


def test_a_shared_prefix_workload_shares_each_groups_prefix_exactly() -> None:
    workload = Workload(input_len=8, output_len=4, prefix_len=32, groups=3, prompts_per_group=5)
    prompts = workload.prompts(vocab_size=1000, seed=2)
    assert len(prompts) == workload.num_requests == 15
    assert all(len(p) == 40 and all(100 <= t < 1000 for t in p) for p in prompts)
    prefixes = {tuple(p[:32]) for p in prompts}
    assert len(prefixes) == 3
    assert len({tuple(p) for p in prompts}) == 15
    assert workload.prompts(1000, seed=2) == prompts  # seeded


def _timing(ttft: float, gaps: list[float], prompt: int = 10, error: str = "") -> Timing:
    e2e = None if error else ttft + sum(gaps)
    tokens = 1 + len(gaps)
    return Timing(0.0, tokens, prompt, ttft, e2e, gaps, tokens, "r0", error)


def test_summary_percentiles_goodput_and_cost() -> None:
    timings = [_timing(0.1 * i, [0.01] * 9) for i in range(1, 11)]  # TTFT 0.1 .. 1.0 s
    timings.append(_timing(0.05, [0.01], error="UNAVAILABLE"))
    targets = LatencyTargets(ttft_s=0.5, itl_s=0.02)
    summary = summarize(timings, duration_s=10.0, rate=1.0, targets=targets,
                        usd_per_gpu_hour=3.6, gpus=2)  # fmt: skip
    assert summary.requests == 11 and summary.failed == 1
    assert summary.ttft_ms == {"p50": 500.0, "p90": 900.0, "p99": 1000.0}
    assert summary.itl_ms == {"p50": 10.0, "p90": 10.0, "p99": 10.0}
    assert summary.requests_per_s == 1.0
    assert summary.goodput_per_s == 0.5  # TTFT 0.1 .. 0.5 s: five requests in 10 s
    assert summary.input_tokens == 100 and summary.output_tokens == 102
    # 3.6 $/h x 2 GPUs x 10 s = 0.02 $, over 100 input and 102 output tokens
    assert summary.usd_per_m_input_tokens == pytest.approx(200.0)
    assert summary.usd_per_m_output_tokens == pytest.approx(0.02 / 102 * 1e6, rel=1e-4)


def test_a_request_cut_short_is_not_answered_nor_good() -> None:
    cut = _timing(0.1, [0.01] * 3)
    cut.tokens_asked = 8  # 4 of 8 tokens came back
    assert not cut.answered and cut.finished_at == pytest.approx(0.13)
    assert summarize([cut], 1.0, 1.0, LatencyTargets(ttft_s=1.0)).goodput_per_s == 0.0


def test_a_run_where_nothing_finished_says_so() -> None:
    summary = summarize([_timing(0.1, [], error="DEADLINE_EXCEEDED")], 1.0, 1.0, LatencyTargets())
    assert summary.failed == 1 and math.isnan(summary.ttft_ms["p50"])
    assert summary.goodput_per_s == 0.0 and summary.usd_per_m_output_tokens is None
