"""`kvfleet status`: each replica of a running fleet, its KV cache and queue, its block pool's
invariants checked where it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import ray
from ray import serve

from cluster import ray_cluster
from cluster.app import DEPLOYMENT
from cluster.replica import KVState, Pinned, replica_ids
from cluster.run_state import FleetError, running_state


def kv_states(app_name: str, timeout_s: float = 30.0) -> dict[str, KVState]:
    """Every live replica's KV state by replica id. Each query is pinned to its replica, which
    checks its block pool's invariants before it answers (a broken pool fails the query)."""
    handle = serve.get_deployment_handle(DEPLOYMENT, app_name=app_name)
    return {
        replica_id: handle.kv_state.remote(Pinned(replica_id)).result(timeout_s=timeout_s)
        for replica_id in replica_ids(app_name, DEPLOYMENT)
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, default=Path(".kvfleet/run"))


def run(args: argparse.Namespace) -> int:
    state = running_state(args.run_dir)
    if state is None:
        raise FleetError(f"nothing is running from {args.run_dir}; `kvfleet up` first")
    ray_cluster.join(state.ray_address)
    try:
        states = kv_states(state.app_name)
    finally:
        ray.shutdown()
    print(f"{state.app_name}: {len(states)} replicas, front door on {state.target}")
    for replica_id, kv in sorted(states.items()):
        used = kv.num_blocks - kv.num_free_blocks
        print(
            f"  {replica_id}  KV blocks {used}/{kv.num_blocks} in use  "
            f"{kv.num_unfinished} requests unfinished  integrity ok"
        )
    return 0
