"""Hypothesis strategies for what a YAML file can hold, and the key paths of a mapping: the
configs' and the Helm values' fuzz tests set any key to any such value."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def yaml_values(finite: bool = False) -> st.SearchStrategy[Any]:
    """Scalars (null, booleans, big integers, floats, text) and small lists and mappings of
    them. ``finite``: no NaN or infinity (Helm cannot read them at all)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=not finite, allow_infinity=not finite),
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    )


def key_paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of a nested mapping, sections and leaves alike, as paths from the top."""
    paths = []
    for key, value in tree.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += key_paths(value, (*prefix, key))
    return paths
