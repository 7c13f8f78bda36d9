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

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),  # Helm itself cannot read .inf or .nan
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in tree.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += _paths(value, (*prefix, key))
    return paths


PATHS = _paths(yaml.safe_load((CHART / "values.yaml").read_text()))


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
