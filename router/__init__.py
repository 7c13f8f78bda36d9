"""gRPC front door and prefix-cache-aware routing (built on the engine; see the issues)."""

from router.cost import CostModel
from router.event_feed import KVSnapshot, ReplicaFeed, SnapshotBuilder
from router.hashing import PromptBlocks, chain_key, root_seed
from router.index import PrefixIndex, UnknownReplicaError
from router.load import ReplicaLoad
from router.policy import (
    NoReplicaError,
    OverloadedError,
    PrefixAwareRouter,
    ReplicaScore,
    RouterConfig,
    RoutingDecision,
)

__all__ = [
    "CostModel",
    "KVSnapshot",
    "NoReplicaError",
    "OverloadedError",
    "PrefixAwareRouter",
    "PrefixIndex",
    "PromptBlocks",
    "ReplicaFeed",
    "ReplicaLoad",
    "ReplicaScore",
    "RouterConfig",
    "RoutingDecision",
    "SnapshotBuilder",
    "UnknownReplicaError",
    "chain_key",
    "root_seed",
]
