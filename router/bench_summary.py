"""What a load test measured, as platform teams budget with it: latency percentiles, throughput,
goodput under latency targets, and the cost of a million tokens at a GPU-hour price."""

from __future__ import annotations

import math
from dataclasses import dataclass

from router.load_test import Timing

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class LatencyTargets:
    """A request counts towards goodput when it meets every target that is set."""

    ttft_s: float | None = None
    itl_s: float | None = None  # the request's mean gap between tokens
    e2e_s: float | None = None

    def met_by(self, timing: Timing) -> bool:
        if not timing.answered or timing.ttft_s is None or timing.e2e_s is None:
            return False
        itl = sum(timing.itl_s) / len(timing.itl_s) if timing.itl_s else 0.0
        return (
            (self.ttft_s is None or timing.ttft_s <= self.ttft_s)
            and (self.itl_s is None or itl <= self.itl_s)
            and (self.e2e_s is None or timing.e2e_s <= self.e2e_s)
        )


@dataclass(frozen=True)
class Summary:
    rate: float  # offered, requests per second
    duration_s: float
    requests: int
    failed: int
    input_tokens: int
    output_tokens: int
    requests_per_s: float
    output_tokens_per_s: float
    ttft_ms: dict[str, float]  # "p50", "p90", "p99"
    itl_ms: dict[str, float]
    e2e_ms: dict[str, float]
    goodput_per_s: float  # requests per second that met every latency target
    usd_per_m_input_tokens: float | None  # the run's GPU cost over its input tokens
    usd_per_m_output_tokens: float | None  # ... over its output tokens


def summarize(
    timings: list[Timing],
    duration_s: float,
    rate: float,
    targets: LatencyTargets,
    usd_per_gpu_hour: float | None = None,
    gpus: float = 1.0,
) -> Summary:
    """Latencies of the requests that finished; tokens of all. The cost charges the whole
    run's GPU time to each kind of token in turn (the figure a price per token is set from)."""
    done = [t for t in timings if not t.error and t.e2e_s is not None]
    input_tokens = sum(t.prompt_tokens for t in done)
    output_tokens = sum(t.output_tokens for t in timings)
    cost = None if usd_per_gpu_hour is None else usd_per_gpu_hour * gpus * duration_s / 3600
    return Summary(
        rate=rate,
        duration_s=duration_s,
        requests=len(timings),
        failed=len(timings) - len(done),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        requests_per_s=len(done) / duration_s,
        output_tokens_per_s=output_tokens / duration_s,
        ttft_ms=_percentiles([t.ttft_s for t in done if t.ttft_s is not None]),
        itl_ms=_percentiles([gap for t in done for gap in t.itl_s]),
        e2e_ms=_percentiles([t.e2e_s for t in done if t.e2e_s is not None]),
        goodput_per_s=sum(targets.met_by(t) for t in timings) / duration_s,
        usd_per_m_input_tokens=_per_million(cost, input_tokens),
        usd_per_m_output_tokens=_per_million(cost, output_tokens),
    )


def nearest_rank(ordered: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted, non-empty ``ordered``, by nearest rank."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _percentiles(seconds: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles in ms; NaN for none (nothing finished)."""
    ordered = sorted(seconds)
    if not ordered:
        return {f"p{p}": math.nan for p in PERCENTILES}
    return {f"p{p}": round(1000 * nearest_rank(ordered, p / 100), 2) for p in PERCENTILES}


def _per_million(cost: float | None, tokens: int) -> float | None:
    if cost is None or tokens == 0:
        return None
    return round(cost / tokens * 1e6, 4)
