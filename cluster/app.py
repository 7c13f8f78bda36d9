"""The Serve application: N engine replicas behind kvfleet's request router."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle
from redis.connection import parse_url

from cluster.replica import EngineReplica
from router.policy import RouterConfig
from worker.config import EngineConfig

DEPLOYMENT = "engine"
POLICIES = {
    "kvfleet": "cluster.request_router:PrefixAwareRequestRouter",
    "round_robin": "cluster.request_router:RoundRobinRequestRouter",
}


@dataclass(frozen=True)
class FleetConfig:
    """One served model: its replicas, how requests are routed among them, and where KV events
    go. ``redis_url`` None runs the router on its predicted entries alone (approximate mode).
    ``replica_cpus`` is what Ray reserves per replica; ``torch_threads`` caps each replica's
    intra-op threads (replicas sharing a few cores otherwise oversubscribe them)."""

    engine: EngineConfig
    app_name: str = "kvfleet"
    num_replicas: int = 2
    policy: str = "kvfleet"
    redis_url: str | None = None
    replica_cpus: float = 1.0
    torch_threads: int | None = None
    max_ongoing_requests: int = 256
    stats_period_s: float = 0.2
    router: RouterConfig = field(default_factory=RouterConfig)  # its block_size: the engine's

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {self.num_replicas}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.replica_cpus < 0:
            raise ValueError(f"replica_cpus must be >= 0, got {self.replica_cpus}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1, got {self.torch_threads}")
        if self.max_ongoing_requests < 1:
            raise ValueError(
                f"max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}"
            )
        if self.redis_url is not None:
            try:
                parse_url(self.redis_url)
            except ValueError as exc:
                raise ValueError(f"redis_url {self.redis_url!r}: {exc}") from None
        if not self.stats_period_s > 0:
            raise ValueError(f"stats_period_s must be > 0, got {self.stats_period_s}")

    @property
    def model(self) -> Path:
        return self.engine.model


def build_app(config: FleetConfig) -> Application:
    # A plain dict: pydantic's generated signature confuses mypy.
    router_options: dict[str, Any] = {
        "request_router_class": POLICIES[config.policy],
        "request_router_kwargs": {
            "config": dataclasses.replace(
                config.router, block_size=config.engine.block_size
            ).to_json(),
            "redis_url": config.redis_url,
            "namespace": config.app_name,
        },
        "request_routing_stats_period_s": config.stats_period_s,
        "request_routing_stats_timeout_s": max(1.0, 5 * config.stats_period_s),
    }
    router = RequestRouterConfig(**router_options)
    deployment = serve.deployment(
        name=DEPLOYMENT,
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.replica_cpus},
        request_router_config=router,
        health_check_period_s=2.0,
    )(EngineReplica)
    return deployment.bind(config.engine, config.redis_url, config.app_name, config.torch_threads)


def deploy(config: FleetConfig) -> DeploymentHandle:
    """Run the application on the connected Ray cluster (no HTTP proxy: gRPC is the front
    door) and wait until every replica is up."""
    serve.start(http_options={"location": "NoServer"})
    serve.run(build_app(config), name=config.app_name, route_prefix=None)
    return serve.get_deployment_handle(DEPLOYMENT, app_name=config.app_name)
