"""kvfleet's autoscaling policy: replicas for a pool from its queue, not from Serve's count of
ongoing requests (a batching engine runs many requests at once and is not overloaded by them;
what says it is overloaded is requests waiting for a slot, prompt tokens waiting for compute,
and the time to a first token).

    pressure = max(waiting / (n * target_waiting),
                   queued prefill tokens / (n * target_prefill_tokens),
                   p90 TTFT / ttft_target)                    (the last only with a target)

    pressure > 1           -> up: ceil(n * pressure), at least n + 1
    pressure <= 1/2 and    -> down to k = max(in flight / target_running_per_replica,
    nothing waits                           n * pressure / 0.8)
    otherwise              -> stay

A constant load must not flap the pool (dynamo PR #9294). Two rules see to it: the band between
1/2 and 1 where nothing changes, and a downscale only to a size that carries the current load
without crossing a target: its requests fit at target_running_per_replica each (at most the
engine's max_num_seqs, so nothing queues), and the pressure, which grows as n / k when the same
load lands on k replicas, stays at 0.8 or below. Serve applies the min/max bounds and the
upscale and downscale delays around this function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray.serve.config import AutoscalingContext

from cluster.cluster_config import AutoscalingSettings

# What each replica reports to Serve (EngineReplica.record_autoscaling_stats).
WAITING = "waiting"
PREFILL_TOKENS = "prefill_tokens"
RUNNING = "running"
TTFT_P90_S = "ttft_p90_s"  # -1: no first token in the window
DOWN_BAND = 0.5  # at or below this pressure a pool may shrink
AFTER_DOWNSCALE = 0.8  # ... to a size whose predicted pressure stays at or below this


@dataclass(frozen=True, slots=True)
class PoolSignals:
    """A pool's load: its replicas' reports summed (TTFT: the mean of those measured), plus
    requests queued in front of the replicas (in Serve's handles)."""

    num_replicas: int
    waiting: float
    prefill_tokens: float
    running: float
    ttft_p90_s: float | None = None


def desired_replicas(signals: PoolSignals, targets: AutoscalingSettings) -> int:
    """The replica count the pool should have (before Serve's bounds and delays)."""
    n = max(signals.num_replicas, 1)
    pressure = pressure_of(signals, targets)
    if pressure > 1.0:
        return max(n + 1, math.ceil(n * pressure))
    if pressure <= DOWN_BAND and signals.waiting == 0:
        carries = math.ceil(signals.running / targets.target_running_per_replica)
        keeps_pressure = math.ceil(n * pressure / AFTER_DOWNSCALE)
        return max(1, min(n, max(carries, keeps_pressure)))
    return n


def pressure_of(signals: PoolSignals, targets: AutoscalingSettings) -> float:
    """How far over its targets the pool is: 1.0 is exactly at the tightest one."""
    n = max(signals.num_replicas, 1)
    ratios = [
        signals.waiting / (n * targets.target_waiting_per_replica),
        signals.prefill_tokens / (n * targets.target_prefill_tokens_per_replica),
    ]
    if targets.ttft_p90_target_s is not None and signals.ttft_p90_s is not None:
        ratios.append(signals.ttft_p90_s / targets.ttft_p90_target_s)
    return max(ratios)


def signals_from(ctx: AutoscalingContext) -> PoolSignals:
    """The signals in Serve's context: each replica's reports averaged over the look-back
    window; requests queued in Serve's handles count as waiting."""
    metrics = ctx.aggregated_metrics or {}

    def total(name: str) -> float:
        return float(sum(metrics.get(name, {}).values()))

    measured = [v for v in metrics.get(TTFT_P90_S, {}).values() if v >= 0]
    return PoolSignals(
        num_replicas=ctx.current_num_replicas,
        waiting=total(WAITING) + float(ctx.total_queued_requests or 0.0),
        prefill_tokens=total(PREFILL_TOKENS),
        running=total(RUNNING),
        ttft_p90_s=sum(measured) / len(measured) if measured else None,
    )


class QueueDepthPolicy:
    """The policy as Serve calls it: built once per deployment with the pool's autoscaling
    settings (as JSON), then called on every control-loop tick."""

    def __init__(self, **settings: Any) -> None:
        self.targets = AutoscalingSettings.model_validate(settings)

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        """Serve weighs the answer against its current target, which counts replicas still
        starting: "stay" and "up" are stated against it, so that replicas on their way are
        not taken for a wish to shrink."""
        desired = desired_replicas(signals_from(ctx), self.targets)
        if desired >= ctx.current_num_replicas:
            desired = max(desired, ctx.target_num_replicas)
        return desired, ctx.policy_state
