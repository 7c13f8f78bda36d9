"""Generated Helm values: any key of values.yaml (the cluster config's included) set to any YAML
value. `helm template` either renders manifests that parse, or refuses with the schema's error
naming the key; a template never fails on its own."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.helm_binary import helm_binary
from cluster.helm_schema import CHART
from tests.yaml_values import key_paths, yaml_values

VALUES = yaml_values(finite=True)  # Helm itself cannot read .inf or .nan
PATHS = key_paths(yaml.safe_load((CHART / "values.yaml").read_text()))


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return value  # type: ignore[no-any-return]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(PATHS), value=VALUES)
def test_any_value_renders_or_is_refused_by_the_schema_naming_its_key(
    helm: Path, path: tuple[str, ...], value: Any
) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        yaml.safe_dump(_nested(path, value), values)
        values.flush()
        done = subprocess.run(
            [str(helm), "template", "rel", str(CHART), "-f", values.name],
            capture_output=True, text=True,
        )  # fmt: skip
    if done.returncode == 0:
        assert [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
    # The key it refuses: by its path, or by its name where null removed it (Helm's way).
    assert "/" + "/".join(path) in done.stderr or repr(path[-1]) in done.stderr, done.stderr
