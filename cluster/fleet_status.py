"""`kvfleet status`: the running fleet's pool (replicas ready and desired, queue, KV cache,
prefix cache) and each replica's load, its block pool's invariants checked where it runs."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cluster import ray_cluster
from cluster.app import DEPLOYMENT
from cluster.pool_status import ReplicaCounts, replica_counts
from cluster.replica import KVState, Pinned, replica_ids
from cluster.run_state import FleetError, RunState, running_state
from worker.load_report import LoadReport

QUERY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    replica_id: str
    kv: KVState  # taken after the block pool's invariants held
    load: LoadReport
    metrics: str  # host:port of its /metrics; "" when it has none


@dataclass(frozen=True, slots=True)
class FleetStatus:
    app_name: str
    target: str
    http_target: str
    pool: str
    counts: ReplicaCounts
    replicas: list[ReplicaStatus]

    @property
    def waiting(self) -> int:
        return sum(r.load.num_waiting for r in self.replicas)

    @property
    def kv_usage(self) -> float:
        blocks = sum(r.kv.num_blocks for r in self.replicas)
        used = sum(r.kv.num_blocks - r.kv.num_free_blocks for r in self.replicas)
        return used / blocks if blocks else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        queries = sum(r.load.prefix_queries for r in self.replicas)
        return sum(r.load.prefix_hits for r in self.replicas) / queries if queries else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "waiting": self.waiting,
            "kv_usage": round(self.kv_usage, 4),
            "prefix_hit_rate": round(self.prefix_hit_rate, 4),
        }


def kv_states(app_name: str, timeout_s: float = QUERY_TIMEOUT_S) -> dict[str, KVState]:
    """Every live replica's KV state by replica id. Each query is pinned to its replica, which
    checks its block pool's invariants before it answers (a broken pool fails the query)."""
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name=app_name)
    return {
        replica_id: handle.kv_state.remote(Pinned(replica_id)).result(timeout_s=timeout_s)
        for replica_id in replica_ids(app_name, DEPLOYMENT)
    }


def fleet_status(state: RunState) -> FleetStatus:
    """In a process connected to the fleet's Ray cluster."""
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name=state.app_name)
    replicas = []
    for replica_id, kv in sorted(kv_states(state.app_name).items()):
        pinned = Pinned(replica_id)
        load = handle.load.remote(pinned).result(timeout_s=QUERY_TIMEOUT_S)
        metrics = handle.metrics_address.remote(pinned).result(timeout_s=QUERY_TIMEOUT_S)
        replicas.append(ReplicaStatus(replica_id, kv, load, metrics))
    counts = replica_counts(state.app_name)
    return FleetStatus(
        state.app_name, state.target, state.http_target, "colocated", counts, replicas
    )


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
    counts = status.counts
    header = (
        f"[bold]{status.app_name}[/bold]  gRPC {status.target}"
        + (f"  HTTP {status.http_target}" if status.http_target else "")
        + f"\npool {status.pool}: {counts.running}/{counts.desired} replicas ready"
        + (f", {counts.starting} starting" if counts.starting else "")
        + (f", {counts.stopping} draining" if counts.stopping else "")
        + f"; {status.waiting} waiting; KV cache {status.kv_usage:.0%} used; "
        f"prefix cache hit rate {status.prefix_hit_rate:.0%}"
    )
    table = Table("replica", "running", "waiting", "prefill tokens", "KV blocks used",
                  "hit rate", "block pool", "metrics")  # fmt: skip
    for r in status.replicas:
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
    return Group(header, table)
