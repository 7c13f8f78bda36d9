"""Fixtures shared by the whole suite: the tiny demo model, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.demo_model import write_demo_model

# Two cores: more threads than that only adds contention between test processes.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "demo-tiny"
    write_demo_model(path, preset="tiny", seed=0)
    return path
