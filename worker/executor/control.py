"""The driver's line to its ranks: one TCP connection each, length-prefixed pickles.

Every step is pickled once and written to every rank; only the sampling rank answers. The
driver waits on all connections at once, so a rank that fails (it reports why) or dies (its
connection closes) is noticed at once, whichever rank it is.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from worker.errors import WorkerFailedError

_HEADER = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class RankFailure:
    """What a rank sends before it gives up on a step."""

    rank: int
    error: str


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        n = sock.recv_into(view[received:])
        if n == 0:
            raise EOFError("connection closed")
        received += n
    return bytes(buffer)


def _recv(sock: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return pickle.loads(_recv_exact(sock, size))


def _connect_options(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ControlServer:
    """Driver side."""

    def __init__(self, host: str) -> None:
        self._listener = socket.create_server((host, 0))
        self.address = (host, self._listener.getsockname()[1])
        self._ranks: dict[int, socket.socket] = {}

    def accept(self, world_size: int, timeout_s: float) -> bool:
        """Take connections for up to ``timeout_s``; True once all ``world_size`` ranks have
        connected and named themselves."""
        deadline = time.monotonic() + timeout_s
        while len(self._ranks) < world_size:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._listener], [], [], max(remaining, 0))
            if not ready:
                return False
            conn, _ = self._listener.accept()
            _connect_options(conn)
            self._ranks[int(_recv(conn))] = conn
        return True

    def missing(self, world_size: int) -> list[int]:
        return sorted(set(range(world_size)) - set(self._ranks))

    def broadcast(self, message: Any) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        for rank, conn in self._ranks.items():
            try:
                _send(conn, payload)
            except OSError as exc:
                raise WorkerFailedError(f"rank {rank} is unreachable: {exc}") from exc

    def receive(self, from_rank: int, timeout_s: float) -> Any:
        """The next message of ``from_rank``; WorkerFailedError if any rank fails, dies, or the
        answer takes longer than ``timeout_s``."""
        by_socket = {conn: rank for rank, conn in self._ranks.items()}
        ready, _, _ = select.select(list(by_socket), [], [], timeout_s)
        if not ready:
            raise WorkerFailedError(f"no answer from rank {from_rank} in {timeout_s:.0f} s")
        # A failure report or a closed connection anywhere outranks an answer.
        ready.sort(key=lambda conn: by_socket[conn] == from_rank)
        conn = ready[0]
        rank = by_socket[conn]
        try:
            message = _recv(conn)
        except (EOFError, OSError) as exc:
            raise WorkerFailedError(f"rank {rank} died (its connection closed: {exc})") from exc
        if isinstance(message, RankFailure):
            raise WorkerFailedError(f"rank {message.rank} failed: {message.error}")
        if rank != from_rank:
            raise WorkerFailedError(f"rank {rank} sent an unexpected {type(message).__name__}")
        return message

    def close(self) -> None:
        for conn in self._ranks.values():
            conn.close()
        self._ranks.clear()
        self._listener.close()


class ControlClient:
    """Rank side."""

    def __init__(self, address: tuple[str, int], rank: int) -> None:
        self._sock = socket.create_connection(address)
        _connect_options(self._sock)
        self.send(rank)

    def receive(self) -> Any:
        return _recv(self._sock)

    def send(self, message: Any) -> None:
        _send(self._sock, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def close(self) -> None:
        self._sock.close()
