"""The routing side, free of torch and Ray: the prefix-aware policy (cost, load, KV index),
the KV-event bus subscriber, and the front doors (grpc_api/)."""

from router.cost import CostModel
from router.event_feed import ReplicaFeed
from router.hashing import PromptBlocks, chain_key, root_seed
from router.index import PrefixIndex
from router.load import ReplicaLoad
from router.policy import PrefixAwarePolicy, ReplicaScore, RouterConfig, RoutingDecision

__all__ = [
    "CostModel",
    "PrefixAwarePolicy",
    "PrefixIndex",
    "PromptBlocks",
    "ReplicaFeed",
    "ReplicaLoad",
    "ReplicaScore",
    "RouterConfig",
    "RoutingDecision",
    "chain_key",
    "root_seed",
]
