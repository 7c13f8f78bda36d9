from __future__ import annotations

from cluster.latency_window import LatencyWindow


def test_quantiles_cover_only_the_window() -> None:
    window = LatencyWindow(window_s=10.0)
    assert window.quantile(0.9, now=0.0) is None
    for i in range(1, 11):
        window.observe(i / 10, now=float(i))  # 0.1 s at t=1 ... 1.0 s at t=10
    assert window.quantile(0.9, now=10.0) == 0.9
    assert window.quantile(0.5, now=10.0) == 0.5
    assert window.quantile(0.9, now=15.5) == 1.0  # t=6..10 remain: 0.6..1.0
    assert window.quantile(0.0, now=15.5) == 0.6
    assert window.quantile(0.9, now=30.0) is None


def test_memory_stays_bounded_keeping_the_newest() -> None:
    window = LatencyWindow(window_s=100.0, max_samples=3)
    for i, seconds in enumerate([9.0, 9.0, 1.0, 2.0, 3.0]):
        window.observe(seconds, now=float(i))
    assert window.quantile(1.0, now=5.0) == 3.0
