"""A pool's replicas as Serve's controller counts them: how many run, start or drain, and how
many its autoscaler (or the config) wants."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ray.serve.context import _get_global_client

from cluster.app import DEPLOYMENT

_STARTING = ("STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION")


@dataclass(frozen=True, slots=True)
class ReplicaCounts:
    running: int  # ready and taking requests
    starting: int  # being placed or loading the model
    stopping: int  # draining: no new requests, those in flight finish
    desired: int  # Serve's target: the autoscaler's decision, or the fixed count

    @property
    def total(self) -> int:
        return self.running + self.starting + self.stopping


def replica_counts(app_name: str, deployment_name: str = DEPLOYMENT) -> ReplicaCounts:
    """In a process connected to the Ray cluster."""
    deployment = _details(app_name, deployment_name)
    if deployment is None:
        return ReplicaCounts(0, 0, 0, 0)
    states = Counter(_name(replica["state"]) for replica in deployment["replicas"])
    return ReplicaCounts(
        running=states["RUNNING"],
        starting=sum(states[s] for s in _STARTING),
        stopping=states["STOPPING"],
        desired=int(deployment["target_num_replicas"]),
    )


def _name(state: object) -> str:
    """A ReplicaState (a str enum) or its value, as its value."""
    return str(getattr(state, "value", state))


def running_replicas(app_name: str, deployment_name: str = DEPLOYMENT) -> list[str]:
    """The ids of the replicas that run (not those starting or draining), sorted."""
    deployment = _details(app_name, deployment_name)
    replicas = deployment["replicas"] if deployment is not None else []
    return sorted(r["replica_id"] for r in replicas if _name(r["state"]) == "RUNNING")


def _details(app_name: str, deployment_name: str) -> dict[str, Any] | None:
    """The deployment's details from Serve's controller (its public status has no target
    count; these instance details, which `serve status` reads too, have it)."""
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running on this Ray cluster")
    applications = client.get_serve_details().get("applications", {})
    deployment: dict[str, Any] | None = (
        applications.get(app_name, {}).get("deployments", {}).get(deployment_name)
    )
    return deployment
