"""`kvfleet status`: the running fleet's pools (replicas ready and desired, queue, KV cache,
prefix cache; a colocated pool, or a prefill and a decode pool) and each replica's load, its
block pool's invariants checked where it runs."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cluster import ray_cluster
from cluster.app import DEPLOYMENT, DEPLOYMENTS, deployed_config
from cluster.pool_status import ReplicaCounts, replica_counts, running_replicas
from cluster.replica import KVState, Pinned
from cluster.run_state import FleetError, RunState, running_state
from worker.load_report import LoadReport

QUERY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    replica_id: str
    kv: KVState | None  # taken after the block pool's invariants held; None: no answer
    load: LoadReport | None
    metrics: str  # host:port of its /metrics; "" when it has none
    error: str = ""  # why it did not answer (it died meanwhile, say)


@dataclass(frozen=True, slots=True)
class PoolStatus:
    pool: str
    counts: ReplicaCounts
    replicas: list[ReplicaStatus]

    @property
    def waiting(self) -> int:
        return sum(load.num_waiting for load in self._loads)

    @property
    def kv_usage(self) -> float:
        kvs = [r.kv for r in self.replicas if r.kv is not None]
        blocks = sum(kv.num_blocks for kv in kvs)
        return sum(kv.num_blocks - kv.num_free_blocks for kv in kvs) / blocks if blocks else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        queries = sum(load.prefix_queries for load in self._loads)
        return sum(load.prefix_hits for load in self._loads) / queries if queries else 0.0

    @property
    def _loads(self) -> list[LoadReport]:
        return [r.load for r in self.replicas if r.load is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "waiting": self.waiting,
            "kv_usage": round(self.kv_usage, 4),
            "prefix_hit_rate": round(self.prefix_hit_rate, 4),
        }


@dataclass(frozen=True, slots=True)
class FleetStatus:
    app_name: str
    target: str
    http_target: str
    pools: list[PoolStatus]

    def to_json(self) -> dict[str, Any]:
        return {
            "app_name": self.app_name,
            "target": self.target,
            "http_target": self.http_target,
            "pools": [pool.to_json() for pool in self.pools],
        }


def kv_states(
    app_name: str, deployment: str = DEPLOYMENT, timeout_s: float = QUERY_TIMEOUT_S
) -> dict[str, KVState]:
    """Every live replica's KV state by replica id. Each query is pinned to its replica, which
    checks its block pool's invariants before it answers (a broken pool fails the query)."""
    handle = serve.get_deployment_handle(deployment, app_name=app_name)
    return {
        replica_id: handle.kv_state.remote(Pinned(replica_id)).result(timeout_s=timeout_s)
        for replica_id in running_replicas(app_name, deployment)
    }


def fleet_status(state: RunState) -> FleetStatus:
    """In a process connected to the fleet's Ray cluster: each pool's running replicas (those
    starting or draining are counted, not asked)."""
    config = deployed_config(state.app_name)
    pools = ["colocated"] if config is None else list(config.pools.active())
    return FleetStatus(
        state.app_name,
        state.target,
        state.http_target,
        [pool_status(state.app_name, pool) for pool in pools],
    )


def pool_status(app_name: str, pool: str) -> PoolStatus:
    deployment = DEPLOYMENTS[pool]
    handle = serve.get_deployment_handle(deployment, app_name=app_name)
    replicas = []
    for replica_id in running_replicas(app_name, deployment):
        pinned = Pinned(replica_id)
        try:
            kv = handle.kv_state.remote(pinned).result(timeout_s=QUERY_TIMEOUT_S)
            load = handle.load.remote(pinned).result(timeout_s=QUERY_TIMEOUT_S)
            metrics = handle.metrics_address.remote(pinned).result(timeout_s=QUERY_TIMEOUT_S)
        except (RayError, TimeoutError) as exc:  # it died or stopped since it was listed
            error = f"no answer: {type(exc).__name__}"
            replicas.append(ReplicaStatus(replica_id, None, None, "", error))
            continue
        replicas.append(ReplicaStatus(replica_id, kv, load, metrics))
    return PoolStatus(pool, replica_counts(app_name, deployment), replicas)


def run(run_dir: Path, output: str, watch_s: float | None) -> None:
    """Print the status once (``output`` "table" or "json"), or every ``watch_s`` seconds until
    interrupted."""
    state = running_state(run_dir)
    if state is None:
        raise FleetError(f"nothing is running from {run_dir}; `kvfleet up` first")
    ray_cluster.join(state.ray_address)
    try:
        if watch_s is None:
            _show(fleet_status(state), output)
            return
        with Live(render(fleet_status(state)), auto_refresh=False) as live:
            while True:
                time.sleep(watch_s)
                live.update(render(fleet_status(state)), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        ray.shutdown()


def _show(status: FleetStatus, output: str) -> None:
    if output == "json":
        print(json.dumps(status.to_json()))
    else:
        Console().print(render(status))


def render(status: FleetStatus) -> Group:
    title = f"[bold]{status.app_name}[/bold]  gRPC {status.target}" + (
        f"  HTTP {status.http_target}" if status.http_target else ""
    )
    return Group(title, *(part for pool in status.pools for part in _render_pool(pool)))


def _render_pool(status: PoolStatus) -> tuple[str, Table]:
    counts = status.counts
    header = (
        f"pool {status.pool}: {counts.running}/{counts.desired} replicas ready"
        + (f", {counts.starting} starting" if counts.starting else "")
        + (f", {counts.stopping} draining" if counts.stopping else "")
        + f"; {status.waiting} waiting; KV cache {status.kv_usage:.0%} used; "
        f"prefix cache hit rate {status.prefix_hit_rate:.0%}"
    )
    table = Table("replica", "running", "waiting", "prefill tokens", "KV blocks used",
                  "hit rate", "block pool", "metrics")  # fmt: skip
    for r in status.replicas:
        if r.kv is None or r.load is None:
            table.add_row(r.replica_id, *["-"] * 5, r.error, "-")
            continue
        hits = r.load.prefix_hits / r.load.prefix_queries if r.load.prefix_queries else 0.0
        table.add_row(
            r.replica_id,
            str(r.load.num_running),
            str(r.load.num_waiting),
            str(r.load.prefill_tokens),
            f"{r.kv.num_blocks - r.kv.num_free_blocks}/{r.kv.num_blocks}",
            f"{hits:.0%}",
            "integrity ok",
            r.metrics or "-",
        )
    return header, table
