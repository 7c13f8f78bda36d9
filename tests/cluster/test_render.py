"""`kvfleet render`: the chart rendered offline from a cluster config, validated, printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from cluster import cluster_config
from cluster.render import render

KVFLEET = [sys.executable, "-m", "cluster.cli"]


def test_render_builds_the_serve_application_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "model: /models/llama\n"
        "pools:\n"
        "  prefill: {replicas: 1, parallelism: {tensor: 2}}\n"
        "  decode: {replicas: 3, parallelism: {tensor: 2}}\n"
    )
    _, objects = render(config, [], release="prod", namespace="llm")
    [service] = [o for o in objects if o["kind"] == "RayService"]
    [app] = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    built = cluster_config.load(app["args"])
    assert built.pools.active().keys() == {"prefill", "decode"}
    assert built.redis.url == "redis://prod-kvfleet-redis:6379/0"
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert {g["groupName"]: g["replicas"] for g in groups} == {"prefill": 1, "decode": 3}


def test_a_bad_config_is_refused_before_anything_renders(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("model: /m\npools: {prefill: {}}\n")
    done = subprocess.run([*KVFLEET, "render", "--config", str(config)], capture_output=True)
    assert done.returncode == 2
    assert b"prefill is set without the other" in done.stderr
    assert done.stdout == b""
