"""The application as Serve's declarative config: a new replica count or new autoscaling bounds
leave its code version alone (Serve then keeps the replicas that stay); anything a replica is
built from changes it."""

from __future__ import annotations

from ray.serve._private.deploy_utils import get_app_code_version

from cluster import cluster_config
from cluster.app import accelerator, application_schema, replica_actor_options
from cluster.scale import scaled

FIXED = cluster_config.load({"model": "/m", "pools": {"colocated": {"replicas": 2}}})
AUTOSCALED = scaled(FIXED, "colocated", None, 1, 4)


def _version(config: cluster_config.ClusterConfig) -> str:
    return get_app_code_version(application_schema(config))


def test_a_new_count_or_new_bounds_keep_the_code_version() -> None:
    assert _version(scaled(FIXED, "colocated", 5, None, None)) == _version(FIXED)
    assert _version(scaled(AUTOSCALED, "colocated", None, 2, 8)) == _version(AUTOSCALED)


def test_the_scale_is_in_the_deployment_options() -> None:
    [fixed] = application_schema(FIXED).deployments
    assert fixed.num_replicas == 2
    [autoscaled] = application_schema(scaled(AUTOSCALED, "colocated", None, 2, 8)).deployments
    assert autoscaled.num_replicas == "auto"
    assert isinstance(autoscaled.autoscaling_config, dict)
    bounds = (
        autoscaled.autoscaling_config["min_replicas"],
        autoscaled.autoscaling_config["max_replicas"],
    )
    assert bounds == (2, 8)


def test_what_replicas_are_built_from_changes_the_code_version() -> None:
    engine = cluster_config.merge(
        FIXED.model_dump(mode="json"), {"pools.colocated.engine.max_num_seqs": 64}
    )
    assert _version(cluster_config.load(engine)) != _version(FIXED)
    targets = cluster_config.merge(
        AUTOSCALED.model_dump(mode="json"),
        {"pools.colocated.autoscaling.target_waiting_per_replica": 8},
    )
    assert _version(cluster_config.load(targets)) != _version(AUTOSCALED)


def test_a_disaggregated_application_has_a_deployment_per_pool() -> None:
    config = cluster_config.load(
        {"model": "/m", "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 3}}}
    )
    schema = application_schema(config)
    assert {d.name: d.num_replicas for d in schema.deployments} == {"prefill": 1, "decode": 3}
    rebuilt = cluster_config.load(schema.args)  # what Serve's replicas are built from
    assert rebuilt.disaggregated
    assert rebuilt.disaggregation == config.disaggregation


def test_a_gpu_pools_single_rank_replica_takes_the_gpu_itself() -> None:
    def pool(**settings: object) -> cluster_config.Pool:
        return cluster_config.Pool.model_validate(settings)

    single = replica_actor_options(pool(accelerator="gpu", ray_resources={"kvfleet_pool_x": 1}))
    assert single == {"num_cpus": 0.0, "num_gpus": 1, "resources": {"kvfleet_pool_x": 1}}
    # A multi-rank replica's ranks take the GPUs (worker/executor/ray_executor.py), not its actor.
    multi = replica_actor_options(pool(accelerator="gpu", parallelism={"tensor": 2}))
    assert "num_gpus" not in multi
    assert "num_gpus" not in replica_actor_options(pool(accelerator="cpu"))
    assert accelerator(pool()) == "cpu"  # auto, and no Ray cluster with GPUs here
