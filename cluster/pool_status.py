"""A pool's replicas as Serve counts them: how many run, start or drain."""

from __future__ import annotations

from dataclasses import dataclass

from ray import serve

from cluster.app import DEPLOYMENT


@dataclass(frozen=True, slots=True)
class ReplicaCounts:
    running: int  # ready and taking requests
    starting: int  # being placed or loading the model
    stopping: int  # draining: no new requests, those in flight finish

    @property
    def total(self) -> int:
        return self.running + self.starting + self.stopping


def replica_counts(app_name: str) -> ReplicaCounts:
    """From Serve's status, in a process connected to the Ray cluster."""
    application = serve.status().applications.get(app_name)
    if application is None or DEPLOYMENT not in application.deployments:
        return ReplicaCounts(0, 0, 0)
    replica_states = application.deployments[DEPLOYMENT].replica_states
    states = {str(getattr(state, "value", state)): n for state, n in replica_states.items()}
    return ReplicaCounts(
        running=states.get("RUNNING", 0),
        starting=sum(states.get(s, 0) for s in ("STARTING", "UPDATING", "RECOVERING")),
        stopping=states.get("STOPPING", 0),
    )
