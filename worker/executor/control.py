"""The driver's line to its ranks: one TCP connection each, length-prefixed pickles.

Every step is pickled once and written to every rank; only the sampling rank answers. The
driver waits on all connections at once, so a rank that fails (it reports why) or dies (its
connection closes) is noticed at once, whichever rank it is.

The listener is on the node's address and pickle runs code, so nothing is unpickled that the
replica did not send: each frame carries an HMAC-SHA256 under a per-replica key (the driver
makes it and hands it to its ranks through Ray, never over this socket) of its sequence number,
length and payload; a frame that fails it, comes out of order, or claims more than
MAX_FRAME_BYTES is refused before its payload is read or unpickled.

    frame:  sequence (u64) | length (u64) | mac (32 bytes) | payload (length bytes)
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from worker.errors import WorkerFailedError

_HEADER = struct.Struct("<QQ")
_MAC_BYTES = hashlib.sha256().digest_size
MAX_FRAME_BYTES = 256 << 20  # a step's inputs are token ids and block tables: far below this


class FrameError(ConnectionError):
    """A frame this channel refuses: forged, replayed or out of order, or too large."""


@dataclass(frozen=True, slots=True)
class RankFailure:
    """What a rank sends before it gives up on a step."""

    rank: int
    error: str


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


class _Channel:
    """One connection's authenticated frames, each way numbered from 0."""

    def __init__(self, sock: socket.socket, key: bytes) -> None:
        self.sock, self._key = sock, key
        self._sent = self._received = 0

    def send_payload(self, payload: bytes) -> None:
        header = _HEADER.pack(self._sent, len(payload))
        mac = hmac.digest(self._key, header + payload, "sha256")
        self.sock.sendall(header + mac + payload)
        self._sent += 1

    def send(self, message: Any) -> None:
        self.send_payload(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def receive(self) -> Any:
        header = _recv_exact(self.sock, _HEADER.size)
        sequence, size = _HEADER.unpack(header)
        if size > MAX_FRAME_BYTES:
            raise FrameError(f"a frame of {size} bytes, at most {MAX_FRAME_BYTES}")
        mac = _recv_exact(self.sock, _MAC_BYTES)
        payload = _recv_exact(self.sock, size)
        if not hmac.compare_digest(mac, hmac.digest(self._key, header + payload, "sha256")):
            raise FrameError("a frame failed authentication")
        if sequence != self._received:
            raise FrameError(f"frame {sequence} where {self._received} was due")
        self._received += 1
        return pickle.loads(payload)


def _connect_options(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ControlServer:
    """Driver side."""

    def __init__(self, host: str) -> None:
        self._listener = socket.create_server((host, 0))
        self.address = (host, self._listener.getsockname()[1])
        self.key = secrets.token_bytes(32)  # for the ranks, through Ray
        self._ranks: dict[int, _Channel] = {}

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
            channel = _Channel(conn, self.key)
            conn.settimeout(max(remaining, 1.0))  # a peer that sends nothing is dropped
            try:
                rank = channel.receive()
            except (FrameError, EOFError, OSError):
                conn.close()  # not one of ours: refused, and the ranks are still awaited
                continue
            conn.settimeout(None)
            self._ranks[int(rank)] = channel
        self._listener.close()  # all here: nobody else may connect
        return True

    def missing(self, world_size: int) -> list[int]:
        return sorted(set(range(world_size)) - set(self._ranks))

    def broadcast(self, message: Any) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        for rank, channel in self._ranks.items():
            try:
                channel.send_payload(payload)
            except OSError as exc:
                raise WorkerFailedError(f"rank {rank} is unreachable: {exc}") from exc

    def receive(self, from_rank: int, timeout_s: float) -> Any:
        """The next message of ``from_rank``; WorkerFailedError if any rank fails, dies, or the
        answer takes longer than ``timeout_s``."""
        rank, message = self._next(timeout_s, f"rank {from_rank}", prefer=from_rank)
        if rank != from_rank:
            raise WorkerFailedError(f"rank {rank} sent an unexpected {type(message).__name__}")
        return message

    def receive_any(self, timeout_s: float) -> tuple[int, Any]:
        """The next message of whichever rank sends one, and that rank; WorkerFailedError as
        ``receive`` says."""
        return self._next(timeout_s, "any rank")

    def _next(self, timeout_s: float, awaited: str, prefer: int | None = None) -> tuple[int, Any]:
        by_socket = {channel.sock: rank for rank, channel in self._ranks.items()}
        ready, _, _ = select.select(list(by_socket), [], [], timeout_s)
        if not ready:
            raise WorkerFailedError(f"no answer from {awaited} in {timeout_s:.0f} s")
        # A failure report or a closed connection elsewhere outranks the answer awaited.
        ready.sort(key=lambda conn: by_socket[conn] == prefer)
        rank = by_socket[ready[0]]
        try:
            message = self._ranks[rank].receive()
        except FrameError as exc:
            raise WorkerFailedError(f"rank {rank}'s connection: {exc}") from exc
        except (EOFError, OSError) as exc:
            raise WorkerFailedError(f"rank {rank} died (its connection closed: {exc})") from exc
        if isinstance(message, RankFailure):
            raise WorkerFailedError(f"rank {message.rank} failed: {message.error}")
        return rank, message

    def close(self) -> None:
        for channel in self._ranks.values():
            channel.sock.close()
        self._ranks.clear()
        self._listener.close()


class ControlClient:
    """Rank side."""

    def __init__(self, address: tuple[str, int], rank: int, key: bytes) -> None:
        sock = socket.create_connection(address)
        _connect_options(sock)
        self._channel = _Channel(sock, key)
        self.send(rank)

    def receive(self) -> Any:
        return self._channel.receive()

    def send(self, message: Any) -> None:
        self._channel.send(message)

    def close(self) -> None:
        self._channel.sock.close()
