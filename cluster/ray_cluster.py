"""Joining a running fleet's Ray cluster from another process (`kvfleet router`, `kvfleet
status`): a clear error at once when nothing answers, and the cluster's token authentication."""

from __future__ import annotations

import socket

import ray

from cluster.run_state import FleetError


def join(address: str) -> None:
    """``ray.init`` against the cluster at HOST:PORT, as a driver that prints no worker logs.
    (Its token authentication: see cluster/cli.py.)"""
    check_reachable(address)
    ray.init(address=address, log_to_driver=False)


def check_reachable(address: str) -> None:
    """Ray waits minutes for a GCS that is not there; say so at once instead."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address must be HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise FleetError(f"no Ray cluster answers at {address}: {exc}") from None
