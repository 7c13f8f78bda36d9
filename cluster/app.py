"""The Serve application: a pool of engine replicas behind kvfleet's request router, a fixed
number of them or as many as its autoscaling policy asks for."""

from __future__ import annotations

import warnings
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig
from ray.serve.deployment import Application, Deployment
from ray.serve.handle import DeploymentHandle

from cluster.cluster_config import AutoscalingSettings, ClusterConfig
from cluster.replica import EngineReplica

DEPLOYMENT = "engine"
POLICIES = {
    "kvfleet": "cluster.request_router:PrefixAwareRequestRouter",
    "round_robin": "cluster.request_router:RoundRobinRequestRouter",
}
AUTOSCALING_POLICY = "cluster.autoscaling_policy:QueueDepthPolicy"
DRAIN_CHECK_PERIOD_S = 1.0  # how often a draining replica checks for requests still in flight


def build_app(config: ClusterConfig) -> Application:
    """``config.redis.url`` None runs the routers on their predicted entries alone."""
    return engine_deployment(config).bind(*replica_args(config))


def replica_args(config: ClusterConfig) -> tuple[Any, ...]:
    """EngineReplica's constructor arguments."""
    pool, scaling = config.pool, config.pool.autoscaling
    ttft_window_s = scaling.ttft_window_s if scaling else None
    return (
        config.engine_config(),
        config.redis.url,
        config.app_name,
        pool.engine.torch_threads,
        ttft_window_s,
    )


def engine_deployment(config: ClusterConfig) -> Deployment:
    """The pool's Serve deployment, before its replicas' arguments are bound."""
    pool = config.pool
    engine = config.engine_config()
    # A plain dict: pydantic's generated signature confuses mypy.
    router_options: dict[str, Any] = {
        "request_router_class": POLICIES[config.router.policy],
        "request_router_kwargs": {
            "config": config.router.router_config(engine.block_size).to_json(),
            "redis_url": config.redis.url,
            "namespace": config.app_name,
        },
        "request_routing_stats_period_s": config.router.stats_period_s,
        "request_routing_stats_timeout_s": max(1.0, 5 * config.router.stats_period_s),
    }
    scaling = pool.autoscaling
    deployment: Deployment = serve.deployment(
        name=DEPLOYMENT,
        num_replicas="auto" if scaling else pool.replicas,
        autoscaling_config=autoscaling_config(scaling, pool.replicas) if scaling else None,
        max_ongoing_requests=pool.max_ongoing_requests,
        ray_actor_options={"num_cpus": pool.cpus_per_replica},
        request_router_config=RequestRouterConfig(**router_options),
        health_check_period_s=2.0,
        # Stopping a replica (a downscale, a redeploy) drains it: Serve sends it nothing new
        # and waits for the requests in flight, up to the grace period.
        graceful_shutdown_timeout_s=pool.drain_grace_s,
        graceful_shutdown_wait_loop_s=DRAIN_CHECK_PERIOD_S,
    )(EngineReplica)
    return deployment


def autoscaling_config(settings: AutoscalingSettings, initial_replicas: int) -> AutoscalingConfig:
    """Serve's autoscaling with kvfleet's queue-depth policy (cluster/autoscaling_policy.py)."""
    with warnings.catch_warnings():  # metrics_interval_s: deprecated, but still what it reads
        warnings.simplefilter("ignore", DeprecationWarning)
        return AutoscalingConfig(
            min_replicas=settings.min_replicas,
            max_replicas=settings.max_replicas,
            initial_replicas=initial_replicas,
            upscale_delay_s=settings.upscale_delay_s,
            downscale_delay_s=settings.downscale_delay_s,
            look_back_period_s=settings.look_back_period_s,
            metrics_interval_s=settings.metrics_interval_s,
            policy=AutoscalingPolicy(
                policy_function=AUTOSCALING_POLICY,
                policy_kwargs=settings.model_dump(mode="json"),
            ),
        )


def deploy(config: ClusterConfig) -> DeploymentHandle:
    """Run the application on the connected Ray cluster (no HTTP proxy: the front doors are
    kvfleet's own) and wait until its first replicas are up."""
    serve.start(http_options={"location": "NoServer"})
    serve.run(build_app(config), name=config.app_name, route_prefix=None)
    return serve.get_deployment_handle(DEPLOYMENT, app_name=config.app_name)
