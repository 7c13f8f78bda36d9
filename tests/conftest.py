"""Fixtures shared by the whole suite: the tiny demo model, made once per session, and a
redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from cluster.demo_model import write_demo_model

if TYPE_CHECKING:  # imported where used: the GPU check runs the suite's GPU tests without redis
    from cluster.redis_server import RedisServer

# Two cores: more threads than that only adds contention between test processes.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "demo-tiny"
    write_demo_model(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; a test that restarts Redis starts its own."""
    from cluster.redis_server import RedisServer

    with RedisServer() as server:
        yield server
