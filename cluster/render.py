"""`kvfleet render`: the Helm chart rendered offline from a cluster config file (and optional
chart values), validated, and printed: what `helm install` would create."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from cluster import cluster_config
from cluster.helm_binary import helm_binary
from cluster.helm_schema import CHART
from cluster.run_state import FleetError

KUBERNETES = "1.33.0"


def chart_values(config: cluster_config.ClusterConfig) -> dict[str, Any]:
    """The chart's `cluster` values for a validated config: what it sets, not its defaults;
    the chart provides Redis, and Ray is the chart's, so those two sections are left out."""
    data = json.loads(config.model_dump_json(exclude_unset=True))
    data.pop("redis", None)
    data.pop("ray", None)
    return {"cluster": data}


def render(
    config_file: Path,
    values_files: list[Path],
    release: str = "kvfleet",
    namespace: str = "default",
    kube_version: str = KUBERNETES,
) -> tuple[str, list[dict[str, Any]]]:
    """The rendered manifests and their objects; FleetError names what is wrong (a config
    key, a chart value, an invalid object)."""
    config = cluster_config.load_file(config_file)  # every check, cross-field ones included
    if not CHART.is_dir():
        raise FleetError(f"no chart at {CHART}: render from a kvfleet source checkout")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        yaml.safe_dump(chart_values(config), values)
        values.flush()
        command = [
            str(helm_binary()), "template", release, str(CHART), "-n", namespace,
            "--kube-version", kube_version, "-f", values.name,
            *(arg for path in values_files for arg in ("-f", str(path))),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise FleetError(f"the chart did not render: {done.stderr.strip()}")
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    _validate(objects, kube_version)
    return done.stdout, objects


def _validate(objects: list[dict[str, Any]], kube_version: str) -> None:
    """Core objects against the Kubernetes schemas (kubernetes-validate, a dev dependency: a
    plain install renders without this check)."""
    try:
        import kubernetes_validate
    except ImportError:
        print("kubernetes-validate is not installed: objects not validated", file=sys.stderr)
        return
    for obj in objects:
        if obj["apiVersion"] in ("ray.io/v1", "monitoring.coreos.com/v1"):
            continue  # custom resources: no schema bundled
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{obj['kind']} {obj['metadata']['name']}"
            raise FleetError(f"{name} is not valid Kubernetes {kube_version}: {exc}") from None


def summary(objects: list[dict[str, Any]]) -> str:
    counts = Counter(obj["kind"] for obj in objects)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
