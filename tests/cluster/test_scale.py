"""`kvfleet scale` on the config: a fixed count, or autoscaling bounds, validated as a whole."""

from __future__ import annotations

import pytest

from cluster import cluster_config
from cluster.cluster_config import AutoscalingSettings, ConfigError
from cluster.run_state import FleetError
from cluster.scale import scaled

FIXED = cluster_config.load({"model": "/m", "pools": {"colocated": {"replicas": 2}}})


def test_a_replica_count_fixes_the_pool_and_turns_autoscaling_off() -> None:
    autoscaled = scaled(FIXED, "colocated", None, 1, 4)
    fixed = scaled(autoscaled, "colocated", 3, None, None)
    assert fixed.pool.replicas == 3 and fixed.pool.autoscaling is None


def test_bounds_turn_autoscaling_on_from_the_current_count() -> None:
    config = scaled(FIXED, "colocated", None, None, 4)
    assert config.pool.autoscaling is not None
    assert (config.pool.autoscaling.min_replicas, config.pool.autoscaling.max_replicas) == (2, 4)
    assert config.pool.replicas == 2


def test_new_bounds_keep_the_other_autoscaling_settings_and_clamp_the_count() -> None:
    settings = {"min_replicas": 1, "max_replicas": 8, "target_waiting_per_replica": 5}
    config = cluster_config.load(
        {"model": "/m", "pools": {"colocated": {"replicas": 6, "autoscaling": settings}}}
    )
    lowered = scaled(config, "colocated", None, None, 3)
    assert lowered.pool.autoscaling == AutoscalingSettings(
        min_replicas=1, max_replicas=3, target_waiting_per_replica=5
    )
    assert lowered.pool.replicas == 3


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("prefill", 2, None, None), FleetError, "no pool 'prefill'; this fleet has: colocated"),
        (("colocated", None, None, None), FleetError, "give either --replicas N, or --min N"),
        (("colocated", 2, 1, None), FleetError, "give either --replicas N, or --min N"),
        (("colocated", 0, None, None), ConfigError, "pools.colocated.replicas: Input should be"),
        (("colocated", None, 3, 2), ConfigError, "max_replicas (2) must be >= min_replicas (3)"),
    ],
)
def test_bad_requests_name_the_problem(
    args: tuple[str, int | None, int | None, int | None], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        scaled(FIXED, *args)
    assert message in str(raised.value)


def test_new_bounds_start_from_the_count_the_autoscaler_reached() -> None:
    settings = {"min_replicas": 1, "max_replicas": 8}
    config = cluster_config.load(
        {"model": "/m", "pools": {"colocated": {"replicas": 2, "autoscaling": settings}}}
    )
    assert scaled(config, "colocated", None, None, 10, current=6).pool.replicas == 6
    assert scaled(config, "colocated", None, None, 4, current=6).pool.replicas == 4
