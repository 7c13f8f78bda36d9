"""kvfleet's autoscaling policy on its own: what each signal asks for, and a pool under a
constant load that settles instead of flapping."""

from __future__ import annotations

import math

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingContext

from cluster.autoscaling_policy import (
    DOWN_BAND,
    PoolSignals,
    QueueDepthPolicy,
    desired_replicas,
    pressure_of,
    signals_from,
)
from cluster.cluster_config import AutoscalingSettings

TARGETS = AutoscalingSettings(
    min_replicas=1,
    max_replicas=8,
    target_waiting_per_replica=2,
    target_prefill_tokens_per_replica=4096,
    target_running_per_replica=32,
)


def test_waiting_requests_over_target_scale_up_in_proportion() -> None:
    signals = PoolSignals(num_replicas=2, waiting=12, prefill_tokens=0, running=64)
    assert desired_replicas(signals, TARGETS) == 6  # 12 waiting / (2 x 2) = 3x the target


def test_a_queue_just_over_target_adds_at_least_one_replica() -> None:
    signals = PoolSignals(num_replicas=4, waiting=8.5, prefill_tokens=0, running=64)
    assert desired_replicas(signals, TARGETS) == 5


def test_waiting_prefill_tokens_scale_up_even_with_few_requests_waiting() -> None:
    signals = PoolSignals(num_replicas=1, waiting=1, prefill_tokens=10_000, running=4)
    assert desired_replicas(signals, TARGETS) == 3  # 10k tokens / 4096 per replica


def test_a_slow_first_token_scales_up_when_a_target_is_set() -> None:
    signals = PoolSignals(1, waiting=0, prefill_tokens=0, running=8, ttft_p90_s=3.0)
    assert desired_replicas(signals, TARGETS) == 1  # no TTFT target: the queue is short
    with_target = TARGETS.model_copy(update={"ttft_p90_target_s": 1.0})
    assert desired_replicas(signals, with_target) == 3


def test_within_the_band_the_pool_stays() -> None:
    signals = PoolSignals(num_replicas=4, waiting=6, prefill_tokens=0, running=10)
    assert desired_replicas(signals, TARGETS) == 4  # 0.75 of the waiting target
    queued_tokens = 0.7 * 8 * TARGETS.target_prefill_tokens_per_replica
    signals = PoolSignals(num_replicas=8, waiting=0, prefill_tokens=queued_tokens, running=10)
    assert desired_replicas(signals, TARGETS) == 8  # 7 would carry it, but 0.7 is in the band


def test_an_idle_pool_shrinks_to_what_its_requests_need() -> None:
    assert desired_replicas(PoolSignals(6, 0, 0, running=70), TARGETS) == 3  # 70 / 32
    assert desired_replicas(PoolSignals(6, 0, 0, running=0), TARGETS) == 1


def test_a_pool_never_shrinks_while_requests_wait() -> None:
    signals = PoolSignals(num_replicas=6, waiting=0.5, prefill_tokens=0, running=10)
    assert desired_replicas(signals, TARGETS) == 6


def test_a_pool_shrinks_no_further_than_keeps_its_first_tokens_on_target() -> None:
    targets = TARGETS.model_copy(update={"ttft_p90_target_s": 1.0})
    signals = PoolSignals(num_replicas=8, waiting=0, prefill_tokens=0, running=16, ttft_p90_s=0.4)
    # 16 running fit on one replica, but 8 x 0.4 s / 0.8 needs four to stay under the target.
    assert desired_replicas(signals, targets) == 4


def _pool_under_load(clients: int, replicas: int, ttft_target: float | None) -> PoolSignals:
    """A closed-loop load of ``clients`` spread evenly: each replica runs up to 128 (the
    engine's max_num_seqs) and queues the rest; its first token costs a fixed 0.1 s plus 20 ms
    per request it holds."""
    per_replica = clients / replicas
    waiting = max(0.0, per_replica - 128) * replicas
    return PoolSignals(
        num_replicas=replicas,
        waiting=waiting,
        prefill_tokens=256 * waiting,
        running=min(per_replica, 128) * replicas,
        ttft_p90_s=0.1 + 0.02 * per_replica if ttft_target else None,
    )


@pytest.mark.parametrize("ttft_target", [None, 1.0, 0.5])
@pytest.mark.parametrize("clients", [1, 40, 150, 300, 500, 1000])
def test_a_constant_load_settles_without_flapping(clients: int, ttft_target: float | None) -> None:
    targets = TARGETS.model_copy(update={"ttft_p90_target_s": ttft_target, "max_replicas": 64})
    replicas, history = 1, []
    for _ in range(40):
        wanted = desired_replicas(_pool_under_load(clients, replicas, ttft_target), targets)
        replicas = min(max(wanted, targets.min_replicas), targets.max_replicas)
        history.append(replicas)
    settled = history[10:]
    assert len(set(settled)) == 1, history  # no change once settled
    final = _pool_under_load(clients, replicas, ttft_target)
    assert final.waiting == 0
    if ttft_target is not None:
        assert final.ttft_p90_s is not None and final.ttft_p90_s <= ttft_target
    # Not larger than needed either: in the band, or no larger than its requests need.
    needed = max(1, math.ceil(final.running / targets.target_running_per_replica))
    assert pressure_of(final, targets) > DOWN_BAND or replicas <= needed


def _context(
    current: int, target: int, metrics: dict[str, dict[str, float]], queued: float = 0.0
) -> AutoscalingContext:
    deployment = DeploymentID(name="engine", app_name="app")
    ids = {u: ReplicaID(unique_id=u, deployment_id=deployment) for m in metrics.values() for u in m}
    return AutoscalingContext(
        deployment_id=deployment,
        deployment_name="engine",
        app_name="app",
        current_num_replicas=current,
        target_num_replicas=target,
        running_replicas=list(ids.values()),
        total_num_requests=0,
        total_queued_requests=queued,
        aggregated_metrics={
            name: {ids[u]: value for u, value in values.items()} for name, values in metrics.items()
        },
        raw_metrics=None,
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=8,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=None,
    )


POLICY = QueueDepthPolicy(
    **TARGETS.model_dump(mode="json", exclude={"min_replicas", "max_replicas"})
)


def test_serve_context_sums_replica_reports_and_counts_handle_queues_as_waiting() -> None:
    metrics = {
        "waiting": {"a": 3, "b": 1},
        "prefill_tokens": {"a": 500, "b": 100},
        "running": {"a": 10, "b": 11},
        "ttft_p90_s": {"a": 0.5, "b": -1},  # b: no first token in its window
    }
    ctx = _context(current=2, target=2, metrics=metrics, queued=5)
    signals = signals_from(ctx)
    assert signals == PoolSignals(2, waiting=9, prefill_tokens=600, running=21, ttft_p90_s=0.5)
    assert POLICY(ctx) == (5, {})  # 9 waiting / (2 x 2) is 2.25x the target: 2 x 2.25


def test_replicas_still_starting_are_not_taken_for_a_wish_to_shrink() -> None:
    steady = {"waiting": {"a": 1, "b": 1}, "running": {"a": 20, "b": 20}}  # within the band
    assert POLICY(_context(current=2, target=4, metrics=steady)) == (4, {})
    idle = {"waiting": {"a": 0, "b": 0}, "running": {"a": 1, "b": 0}}
    assert POLICY(_context(current=2, target=4, metrics=idle)) == (1, {})
