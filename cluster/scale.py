"""`kvfleet scale`: change a running pool's replica count, or its autoscaling bounds, in place
(Serve updates the deployment; replicas that stay keep running, those removed are drained)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray

from cluster import cluster_config, ray_cluster
from cluster.app import DEPLOYMENTS, deploy
from cluster.cluster_config import ClusterConfig
from cluster.pool_status import replica_counts
from cluster.run_state import CONFIG_FILE, FleetError, running_state


def scaled(
    config: ClusterConfig,
    pool: str,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    current: int | None = None,
) -> ClusterConfig:
    """``config`` with the pool fixed at ``replicas``, or autoscaling within the new bounds
    (the others kept) from ``current`` replicas (default: the config's count) brought within
    them; ConfigError names what is wrong."""
    pools = config.pools.active()
    if pool not in pools:
        raise FleetError(f"no pool {pool!r}; this fleet has: {', '.join(pools)}")
    bounds = min_replicas is not None or max_replicas is not None
    if (replicas is None) == (not bounds):
        raise FleetError("give either --replicas N, or --min N and/or --max N")
    data = json.loads(config.model_dump_json())
    section: dict[str, Any] = data["pools"][pool]
    if replicas is not None:
        section |= {"replicas": replicas, "autoscaling": None}
    else:
        scaling = section.get("autoscaling") or {}
        if min_replicas is not None:
            scaling["min_replicas"] = min_replicas
        if max_replicas is not None:
            scaling["max_replicas"] = max_replicas
        count = section["replicas"] if current is None else current
        # A pool that was fixed starts autoscaling with its count as the bound not given.
        low = scaling.setdefault("min_replicas", min(count, max_replicas or 1))
        high = scaling.setdefault("max_replicas", max(count, low))
        section |= {"autoscaling": scaling, "replicas": min(max(count, low), high)}
    return cluster_config.load(data)


def run(
    run_dir: Path,
    pool: str,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
) -> str:
    """Apply it to the fleet running from ``run_dir``; what changed, in one line."""
    state = running_state(run_dir)
    if state is None:
        raise FleetError(f"nothing is running from {run_dir}; `kvfleet up` first")
    config = cluster_config.load(json.loads((run_dir / CONFIG_FILE).read_text()))
    scaled(config, pool, replicas, min_replicas, max_replicas)  # bad requests fail before Ray
    ray_cluster.join(state.ray_address)
    try:
        # Serve restarts an autoscaled pool from its initial count when its bounds change:
        # start it from the count the autoscaler reached instead.
        current = replica_counts(config.app_name, DEPLOYMENTS[pool]).desired
        new = scaled(config, pool, replicas, min_replicas, max_replicas, current)
        # Recorded first: if the deploy times out, Serve goes on towards the new scale anyway.
        (run_dir / CONFIG_FILE).write_text(new.model_dump_json(indent=2))
        redis = cluster_config.RedisSettings(url=state.redis_url)
        deploy(new.model_copy(update={"redis": redis}))
    finally:
        ray.shutdown()
    return f"pool {pool}: {new.pools.active()[pool].describe_scale()}"
