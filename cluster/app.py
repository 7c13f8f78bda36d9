"""The Serve application: a pool of engine replicas behind kvfleet's request router, a fixed
number of them or as many as its autoscaling policy asks for; or, disaggregated, a prefill and
a decode pool, each a deployment of its own with its own router, scale and engines."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from typing import Any

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig
from ray.serve.context import _get_global_client
from ray.serve.deployment import Application, Deployment
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

from cluster import cluster_config
from cluster.cluster_config import AutoscalingSettings, ClusterConfig, Pool, Pools
from cluster.replica import EngineReplica
from worker.errors import KVFleetError

DEPLOYMENT = "engine"
DEPLOYMENTS = {"colocated": DEPLOYMENT, "prefill": "prefill", "decode": "decode"}  # by pool
POLICIES = {
    "kvfleet": "cluster.request_router:PrefixAwareRequestRouter",
    "round_robin": "cluster.request_router:RoundRobinRequestRouter",
}
AUTOSCALING_POLICY = "cluster.autoscaling_policy:QueueDepthPolicy"
DRAIN_CHECK_PERIOD_S = 1.0  # how often a draining replica checks for requests still in flight
APP_BUILDER = "cluster.app:app_builder"
DEPLOY_TIMEOUT_S = 300.0
SCALE_KEYS = {"min_replicas", "max_replicas"}


class DeployError(KVFleetError):
    """The application did not come up; the message says why."""


def app_builder(args: dict[str, Any]) -> Application:
    """What Serve imports to build the application (application_schema's import_path): the
    application of a cluster config, as JSON."""
    return build_app(cluster_config.load(args))


def build_app(config: ClusterConfig) -> Application:
    """``config.redis.url`` None runs the routers on their predicted entries alone. A
    disaggregated application's ingress is the decode pool, whose replicas hold a handle to
    the prefill pool (to release the blocks they pulled)."""
    if not config.disaggregated:
        return engine_deployment(config).bind(*replica_args(config))
    prefill = engine_deployment(config, "prefill").bind(*replica_args(config, "prefill"))
    return engine_deployment(config, "decode").bind(*replica_args(config, "decode"), prefill)


def replica_args(config: ClusterConfig, pool_name: str = "colocated") -> tuple[Any, ...]:
    """EngineReplica's constructor arguments, for the replicas of pool ``pool_name``."""
    pool = config.pools.active()[pool_name]
    engine = dataclasses.replace(config.engine_config(pool_name), accelerator=accelerator(pool))
    return (
        engine,
        config.redis.url,
        config.app_name,
        pool.engine.torch_threads,
        (pool.autoscaling or AutoscalingSettings()).ttft_window_s,
        None if pool.metrics_port is None else (pool.metrics_host, pool.metrics_port),
    )


def engine_deployment(config: ClusterConfig, pool_name: str = "colocated") -> Deployment:
    """The pool's Serve deployment, before its replicas' arguments are bound."""
    pool = config.pools.active()[pool_name]
    engine = config.engine_config(pool_name)
    # A plain dict: pydantic's generated signature confuses mypy.
    router_options: dict[str, Any] = {
        "request_router_class": POLICIES[config.router.policy],
        "request_router_kwargs": {
            "config": config.router.router_config(engine.block_size).to_json(),
            "redis_url": config.redis.url,
            "namespace": config.app_name,
            "deployment": DEPLOYMENTS[pool_name],
        },
        "request_routing_stats_period_s": config.router.stats_period_s,
        "request_routing_stats_timeout_s": max(1.0, 5 * config.router.stats_period_s),
    }
    scaling = pool.autoscaling
    deployment: Deployment = serve.deployment(
        name=DEPLOYMENTS[pool_name],
        num_replicas="auto" if scaling else pool.replicas,
        autoscaling_config=autoscaling_config(scaling, pool.replicas) if scaling else None,
        max_ongoing_requests=pool.max_ongoing_requests,
        ray_actor_options=replica_actor_options(pool),
        request_router_config=RequestRouterConfig(**router_options),
        health_check_period_s=2.0,
        # Stopping a replica (a downscale, a redeploy) drains it: Serve sends it nothing new
        # and waits for the requests in flight, up to the grace period.
        graceful_shutdown_timeout_s=pool.drain_grace_s,
        graceful_shutdown_wait_loop_s=DRAIN_CHECK_PERIOD_S,
    )(EngineReplica)
    return deployment


def accelerator(pool: Pool) -> str:
    """The pool's accelerator, "auto" resolved where the application is built: GPUs when the
    Ray cluster has any (a replica's actor sees none unless it asks for one)."""
    if pool.accelerator != "auto":
        return pool.accelerator
    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    return "gpu" if gpus else "cpu"


def replica_actor_options(pool: Pool) -> dict[str, Any]:
    """What a replica's own actor asks Ray for. A single-rank replica runs its engine beside it
    (a child process sees the actor's devices), so on GPUs it takes the GPU; a multi-rank one
    drives rank actors, which take theirs. Both ask for the pool's custom resources."""
    options: dict[str, Any] = {"num_cpus": pool.cpus_per_replica}
    single_rank = pool.parallelism.tensor * pool.parallelism.pipeline == 1
    if accelerator(pool) == "gpu" and single_rank:
        options["num_gpus"] = 1
    if pool.ray_resources:
        options["resources"] = dict(pool.ray_resources)
    return options


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
                # The targets alone: Serve restarts the replicas when the policy changes, and
                # new bounds (`kvfleet scale`) must not.
                policy_kwargs=settings.model_dump(mode="json", exclude=SCALE_KEYS),
            ),
        )


def application_schema(config: ClusterConfig) -> ServeApplicationSchema:
    """The application as Serve's declarative config. Its code (import path and arguments) is
    the cluster config without the pool's scale, which goes into the deployment's options
    instead: Serve applies a change of those alone in place, keeping the replicas that stay,
    where any other change rebuilds the application."""
    unscaled_pools: dict[str, Pool] = {}
    deployments = []
    for name, pool in config.pools.active().items():
        scaling = pool.autoscaling
        unscaled: dict[str, Any] = {"replicas": 1}
        if scaling is not None:
            unscaled["autoscaling"] = scaling.model_copy(update=dict.fromkeys(SCALE_KEYS, 1))
        unscaled_pools[name] = pool.model_copy(update=unscaled)
        if scaling is None:
            scale: dict[str, Any] = {"num_replicas": pool.replicas}
        else:
            serve_config = autoscaling_config(scaling, pool.replicas)
            scale = {"num_replicas": "auto", "autoscaling_config": serve_config.model_dump()}
        deployments.append(DeploymentSchema(name=DEPLOYMENTS[name], **scale))
    # The chat template is the front doors' (a file where they run, not where Serve builds).
    replicas_router = config.router.model_copy(update={"chat_template": None})
    built_from = config.model_copy(
        update={"pools": Pools(**unscaled_pools), "router": replicas_router}
    )
    args = json.loads(built_from.model_dump_json())
    return ServeApplicationSchema(
        name=config.app_name,
        import_path=APP_BUILDER,
        args=args,
        route_prefix=None,
        deployments=deployments,
    )


def deployed_config(app_name: str) -> ClusterConfig | None:
    """The cluster config a running application was deployed from (its scale aside); None for
    one deployed otherwise (``serve.run`` of a bound engine deployment, as some benchmarks
    do), which is a colocated pool."""
    client = _get_global_client()
    assert client is not None, "not connected to Serve"
    app = client.get_serve_details().get("applications", {}).get(app_name)
    deployed = app.get("deployed_app_config") if app else None
    return cluster_config.load(deployed["args"]) if deployed else None


def deploy(config: ClusterConfig, timeout_s: float = DEPLOY_TIMEOUT_S) -> DeploymentHandle:
    """Run the application on the connected Ray cluster (no HTTP proxy: the front doors are
    kvfleet's own) and wait until it runs."""
    apply(application_schema(config), timeout_s)
    ingress = DEPLOYMENTS["decode" if config.disaggregated else "colocated"]
    return serve.get_deployment_handle(ingress, app_name=config.app_name)


def apply(schema: ServeApplicationSchema, timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    """Deploy or update one application and wait until it runs. Serve's declarative API takes
    the whole set of applications and deletes those left out: the others deployed that way
    are passed along unchanged."""
    serve.start(http_options={"location": "NoServer"})
    client = _get_global_client()
    assert client is not None  # serve.start connected it
    others = [
        app["deployed_app_config"]
        for name, app in client.get_serve_details().get("applications", {}).items()
        if name != schema.name
        and str(getattr(app["source"], "value", app["source"])) == "declarative"
        and app.get("deployed_app_config")
    ]
    apps = [ServeApplicationSchema.model_validate(app) for app in others]
    client.deploy_apps(ServeDeploySchema(applications=[*apps, schema]))
    _wait_until_running(schema.name, timeout_s)


def _wait_until_running(app_name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(app_name)
        status = str(getattr(app.status, "value", app.status)) if app else "NOT_STARTED"
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            message = app.message if app else ""
            raise DeployError(f"application {app_name!r} failed to deploy: {message}")
        if time.monotonic() > deadline:
            raise DeployError(f"application {app_name!r} not running after {timeout_s:.0f} s")
        time.sleep(0.2)
