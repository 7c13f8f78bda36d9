"""The image is built from the same pyproject as `make`: torch pinned to the Makefile's version,
then the package with its extras, and no dependency named anywhere else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def _torch_pin(text: str, pattern: str) -> str:
    found = re.search(pattern, text)
    assert found, f"no torch pin matching {pattern}"
    return found.group(1)


def test_the_image_pins_the_makefiles_torch() -> None:
    make = _torch_pin((ROOT / "Makefile").read_text(), r"pip install -q torch==([0-9.]+)")
    docker = _torch_pin(DOCKERFILE.read_text(), r"ARG TORCH_VERSION=([0-9.]+)")
    assert docker == make


def test_the_image_installs_nothing_but_torch_and_the_package() -> None:
    installs = re.findall(r"pip install ([^\n\\&]+)", DOCKERFILE.read_text())
    targets = []
    for line in installs:
        words = iter(line.split())
        for word in words:
            if word == "--index-url":
                next(words)  # its value
            elif not word.startswith("-"):
                targets.append(word.strip('"'))
    assert targets, "no pip install found"
    for target in targets:
        if target.startswith("torch==") or target == "pip":  # pinned torch; pip itself
            continue
        assert target == ".[nixl]", f"a second dependency list: {target}"


def test_the_image_copies_every_package_the_project_ships() -> None:
    text = DOCKERFILE.read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[([^\]]+)\]", pyproject)
    assert packages
    for name in re.findall(r'"(\w+)\*"', packages.group(1)):
        assert f"COPY {name} {name}" in text, f"the image leaves out {name}/"
