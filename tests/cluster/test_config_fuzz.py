"""Generated cluster configs: any key of the full config set to any YAML value, and arbitrary
file contents. Each loads (and then builds every pool's engine config) or is refused with a
ConfigError whose message names a key or the file; nothing else is ever raised."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import cluster_config
from cluster.cluster_config import ConfigError
from tests.yaml_values import key_paths, yaml_values

VALUES = yaml_values()


FULL = cluster_config.load(
    {"model": "/models/m", "pools": {"colocated": {"autoscaling": {}}}}
).model_dump(mode="json")
PATHS = key_paths(FULL)


def _with(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = dict(tree)
    key, *rest = path
    out[key] = value if not rest else _with(out[key], tuple(rest), value)
    return out


def _load_cleanly(data: Any) -> None:
    try:
        config = cluster_config.load(data)
    except ConfigError as exc:
        assert str(exc).strip()
        return
    for pool in config.pools.active():
        config.engine_config(pool)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(PATHS), value=VALUES)
def test_any_key_set_to_any_value_loads_or_is_refused_naming_it(
    path: tuple[str, ...], value: Any
) -> None:
    _load_cleanly(_with(FULL, path, value))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    content=st.one_of(
        st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    )
)
def test_any_file_content_loads_or_is_refused_naming_the_file(
    tmp_path_factory: pytest.TempPathFactory, content: str
) -> None:
    path = tmp_path_factory.mktemp("configs") / "fleet.yaml"
    path.write_text(content, encoding="utf-8")
    try:
        cluster_config.load_file(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
