"""The Helm chart, offline: for every scenario values file, `helm lint --strict` and `helm
template`, every core object checked against the Kubernetes schemas of 1.29 and 1.33, the
rendered manifests against golden files (KVFLEET_REGENERATE_GOLDEN=1 rewrites them), and the
assertions that matter: GPUs per replica, probe ports, no secret values, the Serve config equal
to the cluster config. Bad values are refused by the schema, naming the key."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster import cluster_config
from cluster.helm_binary import helm_binary
from cluster.helm_schema import CHART, SCHEMA_FILE, render_schema
from tests.helm.rayservice_shape import RAYSERVICE, pod_templates

SCENARIOS = sorted(p.stem for p in (CHART / "ci").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"
KUBERNETES = ("1.29.0", "1.33.0")
RELEASE = "rel"


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_binary()


def _values(scenario: str) -> dict[str, Any]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    given = yaml.safe_load((CHART / "ci" / f"{scenario}.yaml").read_text()) or {}
    return _merged(defaults, given)


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values: maps merge, anything else replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _render(helm: Path, scenario: str, kube: str = "1.33.0", *extra: str) -> str:
    done = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "-n", "llm", "--kube-version", kube,
         "-f", str(CHART / "ci" / f"{scenario}.yaml"), *extra],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _objects(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return [o for o in _by_kind(objects, kind) if o["metadata"]["name"] == name]


def test_the_values_schema_is_generated_from_the_cluster_config() -> None:
    assert SCHEMA_FILE.read_text() == render_schema(), "run: python -m cluster.helm_schema"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_lints_strictly(helm: Path, scenario: str) -> None:
    done = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / f"{scenario}.yaml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kube", KUBERNETES)
def test_every_core_object_is_valid_kubernetes(helm: Path, scenario: str, kube: str) -> None:
    objects = _objects(_render(helm, scenario, kube, "--api-versions", "monitoring.coreos.com/v1"))
    core = [o for o in objects if o["apiVersion"] not in ("ray.io/v1", "monitoring.coreos.com/v1")]
    assert core
    for obj in core:
        kubernetes_validate.validate(obj, kube, strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kube", KUBERNETES)
def test_the_ray_service_has_kuberays_shape_and_valid_pods(
    helm: Path, scenario: str, kube: str
) -> None:
    for service in _by_kind(_objects(_render(helm, scenario, kube)), "RayService"):
        jsonschema.validate(service, RAYSERVICE)
        yaml.safe_load(service["spec"]["serveConfigV2"])  # a YAML document, as KubeRay reads it
        for template in pod_templates(service):
            kubernetes_validate.validate(template, kube, strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_rendered_chart_matches_its_golden_file(helm: Path, scenario: str) -> None:
    rendered = _render(helm, scenario)
    golden = GOLDEN / f"{scenario}.yaml"
    if os.environ.get("KVFLEET_REGENERATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert golden.is_file(), f"{golden} is missing: KVFLEET_REGENERATE_GOLDEN=1 writes it"
    assert rendered == golden.read_text(), "KVFLEET_REGENERATE_GOLDEN=1 rewrites the golden file"


def _serve_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [service] = _by_kind(objects, "RayService") or [{}]
    if service:
        return yaml.safe_load(service["spec"]["serveConfigV2"])
    [config_map] = _by_kind(objects, "ConfigMap")
    return yaml.safe_load(config_map["data"]["serve.yaml"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_serve_config_is_the_cluster_config(helm: Path, scenario: str) -> None:
    values = _values(scenario)
    [app] = _serve_config(_objects(_render(helm, scenario)))["applications"]
    assert app["import_path"] == "cluster.app:app_builder"
    built = cluster_config.load(app["args"])  # what Serve's replicas are built from
    expected = dict(values["cluster"])
    pools = expected.get("pools", {})
    if "prefill" in pools and "decode" in pools:
        pools = {k: v for k, v in pools.items() if k != "colocated"}
    # What the chart adds to each pool: GPUs, and the resource of its own pods.
    expected["pools"] = {
        name: {"accelerator": "gpu", **pool, "ray_resources": {f"kvfleet_pool_{name}": 1}}
        for name, pool in pools.items()
    }
    redis = values["redis"]
    url = f"redis://{RELEASE}-kvfleet-redis:6379/0" if redis["enabled"] else redis["externalUrl"]
    expected["redis"] = {"url": url or None}
    assert built == cluster_config.load(expected)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_replica_gets_tensor_times_pipeline_gpus(helm: Path, scenario: str) -> None:
    objects = _objects(_render(helm, scenario))
    config = cluster_config.load(_serve_config(objects)["applications"][0]["args"])
    groups = {}
    for service in _by_kind(objects, "RayService"):
        for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            [container] = group["template"]["spec"]["containers"]
            groups[group["groupName"]] = (container, group["rayStartParams"]["num-gpus"])
    for stateful_set in _by_kind(objects, "StatefulSet"):
        component = stateful_set["spec"]["template"]["metadata"]["labels"][
            "app.kubernetes.io/component"
        ]
        if component.startswith("ray-worker-"):
            [container] = stateful_set["spec"]["template"]["spec"]["containers"]
            flag = next(c for c in container["command"] if c.startswith("--num-gpus="))
            groups[component.removeprefix("ray-worker-")] = (container, flag.split("=")[1])
    assert set(groups) == set(config.pools.active())
    for name, pool in config.pools.active().items():
        container, ray_gpus = groups[name]
        gpus = pool.parallelism.tensor * pool.parallelism.pipeline
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert int(ray_gpus) == gpus


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_router_probes_and_service_use_its_ports(helm: Path, scenario: str) -> None:
    objects = _objects(_render(helm, scenario))
    config = cluster_config.load(_serve_config(objects)["applications"][0]["args"])
    [deployment] = _named(objects, "Deployment", f"{RELEASE}-kvfleet-router")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.router.grpc_port
    [service] = _named(objects, "Service", f"{RELEASE}-kvfleet-router")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == config.router.grpc_port
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ("http" in ports) == bool(config.router.http_port)


def test_network_policies_let_only_the_release_reach_its_replicas(helm: Path) -> None:
    assert not _by_kind(_objects(_render(helm, "default")), "NetworkPolicy")  # off by default
    objects = _objects(_render(helm, "network-policy"))
    policies = {o["metadata"]["name"]: o["spec"] for o in _by_kind(objects, "NetworkPolicy")}
    release = {"app.kubernetes.io/name": "kvfleet", "app.kubernetes.io/instance": RELEASE}
    ray = policies[f"{RELEASE}-kvfleet-ray"]
    [rule] = ray["ingress"]
    assert rule["from"][0] == {"podSelector": {"matchLabels": release}}
    assert rule["from"][1]["namespaceSelector"]  # the operator, as the values name it
    # Every Ray pod, and no router or Redis pod, is selected.
    selected = ray["podSelector"]["matchExpressions"]
    assert {"key": "app.kubernetes.io/component", "operator": "NotIn",
            "values": ["router", "redis"]} in selected  # fmt: skip
    for pod in pod_templates(_by_kind(objects, "RayService")[0]):
        labels = pod["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/component"].startswith("ray-")
    router = policies[f"{RELEASE}-kvfleet-router"]
    assert {p["port"] for p in router["ingress"][0]["ports"]} == {50051, 8000}
    assert policies[f"{RELEASE}-kvfleet-redis"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 6379}
    ]


SECRET = "s3cr3t-value-never-rendered"


def test_secrets_reach_the_pods_by_reference_only(helm: Path) -> None:
    rendered = _render(helm, "external-redis", "1.33.0", "--set", "hfToken.existingSecret=hf")
    assert SECRET not in rendered
    objects = _objects(rendered)
    pods = [o for o in objects if o["kind"] in ("Deployment", "RayService")]
    env = [e for o in pods for e in _walk_env(o)]
    named = {e["name"]: e for e in env}
    assert named["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    password = named["KVFLEET_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": "redis-credentials", "key": "redis-password"}
    assert all("value" not in e for e in env if e["name"] in ("HF_TOKEN", "KVFLEET_REDIS_PASSWORD"))


def test_redis_tls_files_reach_every_pod_that_talks_to_redis(helm: Path) -> None:
    objects = _objects(_render(helm, "external-redis-tls"))
    pods = [
        *(
            d["spec"]["template"]
            for d in _named(objects, "Deployment", f"{RELEASE}-kvfleet-router")
        ),
        *(t["template"] for t in pod_templates(_by_kind(objects, "RayService")[0])),
    ]
    for pod in pods:
        [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "redis-tls"]
        assert volume["secret"] == {"secretName": "redis-tls"}
        [container] = [c for c in pod["spec"]["containers"] if c["name"] != "autoscaler"][:1]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["redis-tls"]["mountPath"] == "/etc/kvfleet/redis-tls"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["KVFLEET_REDIS_TLS_CA_FILE"] == "/etc/kvfleet/redis-tls/ca.crt"
        assert env["KVFLEET_REDIS_TLS_KEY_FILE"] == "/etc/kvfleet/redis-tls/tls.key"


def _walk_env(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = list(node.get("env") or []) if isinstance(node.get("env"), list) else []
        return found + [e for v in node.values() for e in _walk_env(v)]
    if isinstance(node, list):
        return [e for v in node for e in _walk_env(v)]
    return []


def test_a_service_monitor_is_rendered_only_where_its_crd_exists(helm: Path) -> None:
    without = _objects(_render(helm, "default"))
    crd = ("--api-versions", "monitoring.coreos.com/v1")
    with_crd = _objects(_render(helm, "default", "1.33.0", *crd))
    assert not _by_kind(without, "ServiceMonitor")
    assert len(_by_kind(with_crd, "ServiceMonitor")) == 1


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("cluster.pools.colocated.replicas=0", "/cluster/pools/colocated/replicas"),
        ("cluster.pools.colocated.engine.max_num_seq=4", "max_num_seq"),
        ("ray.mode=operator", "/ray/mode"),
        ("pools.colocated.memoryPerGpu=lots", "/pools/colocated/memoryPerGpu"),
        ("redis.externalUrl=redis://:hunter2@redis:6379", "/redis/externalUrl"),
        ("cluster.router.grpc_port=70000", "/cluster/router/grpc_port"),
    ],
)
def test_bad_values_are_refused_naming_the_key(helm: Path, setting: str, named: str) -> None:
    done = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--set", setting],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert named in done.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replicas_take_gpus_and_land_on_their_own_pools_pods(helm: Path, scenario: str) -> None:
    objects = _objects(_render(helm, scenario))
    config = cluster_config.load(_serve_config(objects)["applications"][0]["args"])
    offered = {}
    for service in _by_kind(objects, "RayService"):
        for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            offered[group["groupName"]] = yaml.safe_load(group["rayStartParams"]["resources"])
    for stateful_set in _by_kind(objects, "StatefulSet"):
        [container] = stateful_set["spec"]["template"]["spec"]["containers"]
        for arg in container.get("command", []):
            if arg.startswith("--resources="):
                component = stateful_set["spec"]["template"]["metadata"]["labels"]
                pool = component["app.kubernetes.io/component"].removeprefix("ray-worker-")
                offered[pool] = arg.removeprefix("--resources=")
    for name, pool in config.pools.active().items():
        assert pool.accelerator == "gpu"
        resource = f"kvfleet_pool_{name}"
        assert pool.ray_resources == {resource: 1}
        ranks = pool.parallelism.tensor * pool.parallelism.pipeline
        assert yaml.safe_load(offered[name]) == {resource: ranks + 1}  # the replica's actor too


def _leaves(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, (*path, key))]
    return [path]


def test_every_value_is_used_by_a_template() -> None:
    """A key of values.yaml that no template reads is a setting that silently does nothing.
    `cluster` is passed whole (as the Serve config); a pool's Kubernetes settings are read
    through `$k8s`; a map given whole to toYaml counts for every key under it."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = "\n".join(p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file())

    def read(path: tuple[str, ...]) -> bool:
        if path[0] == "cluster":
            return ".Values.cluster" in text
        if path[0] == "pools" and len(path) >= 3:
            return re.search(rf"\$k8s\.{path[2]}\b", text) is not None
        shortest = 1 if len(path) == 1 else 2
        return any(
            re.search(r"\.Values\." + re.escape(".".join(path[:n])) + r"(?![\w.])", text)
            for n in range(shortest, len(path) + 1)
        )

    unread = [".".join(p) for p in _leaves(values) if not read(p)]
    assert not unread, f"values no template reads: {unread}"
