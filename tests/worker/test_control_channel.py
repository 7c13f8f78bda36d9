"""The executor's control channel takes frames only from the replica's own ranks: a forged,
replayed or oversized frame is refused before anything is unpickled."""

from __future__ import annotations

import pickle
import socket
import struct
import threading

import pytest

from worker.errors import WorkerFailedError
from worker.executor.control import (
    MAX_FRAME_BYTES,
    ControlClient,
    ControlServer,
    FrameError,
    _Channel,
)


class _Exploding:
    """Unpickling this runs code: what a forged frame would do if it were unpickled."""

    ran = False

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_Exploding._run, ())

    @staticmethod
    def _run() -> None:
        _Exploding.ran = True


def _connect_in_background(server: ControlServer, rank: int) -> list[ControlClient]:
    clients: list[ControlClient] = []
    thread = threading.Thread(
        target=lambda: clients.append(ControlClient(server.address, rank, server.key))
    )
    thread.start()
    thread.join(timeout=10)
    return clients


def test_steps_and_answers_round_trip() -> None:
    server = ControlServer("127.0.0.1")
    [client] = _connect_in_background(server, rank=0)
    assert server.accept(world_size=1, timeout_s=5)
    server.broadcast({"step": 1})
    assert client.receive() == {"step": 1}
    client.send(("sampled", 0.01))
    assert server.receive(from_rank=0, timeout_s=5) == ("sampled", 0.01)
    client.close()
    server.close()


def test_a_forged_peer_is_refused_and_the_real_rank_still_accepted() -> None:
    server = ControlServer("127.0.0.1")
    _Exploding.ran = False
    forger = ControlClient.__new__(ControlClient)
    sock = socket.create_connection(server.address)
    forger._channel = _Channel(sock, b"not the key" * 3)
    forger.send(_Exploding())  # its 'rank', under the wrong key
    [client] = _connect_in_background(server, rank=0)
    assert server.accept(world_size=1, timeout_s=5)
    assert not _Exploding.ran
    assert sock.recv(1) == b""  # the forger was hung up on
    with pytest.raises(ConnectionRefusedError):  # all ranks in: the listener is closed
        socket.create_connection(server.address, timeout=2)
    client.close()
    server.close()


def _pair(key: bytes = b"k" * 32) -> tuple[_Channel, socket.socket]:
    ours, theirs = socket.socketpair()
    return _Channel(ours, key), theirs


def test_an_oversized_length_is_refused_before_reading_it() -> None:
    channel, peer = _pair()
    peer.sendall(struct.pack("<QQ", 0, MAX_FRAME_BYTES + 1))
    with pytest.raises(FrameError, match="at most"):
        channel.receive()


def test_a_replayed_frame_is_refused() -> None:
    channel, peer = _pair()
    sender = _Channel(peer, b"k" * 32)
    sender.send("first")
    assert channel.receive() == "first"
    _Channel(peer, b"k" * 32).send("first")  # the same frame again: sequence 0, valid MAC
    with pytest.raises(FrameError, match="frame 0 where 1 was due"):
        channel.receive()


def test_a_tampered_payload_fails_authentication() -> None:
    channel, peer = _pair()
    payload = pickle.dumps("step")
    frame = bytearray(struct.pack("<QQ", 0, len(payload)) + b"\0" * 32 + payload)
    peer.sendall(bytes(frame))
    with pytest.raises(FrameError, match="failed authentication"):
        channel.receive()


def test_a_bad_frame_from_a_rank_fails_the_replica_not_the_driver() -> None:
    server = ControlServer("127.0.0.1")
    [client] = _connect_in_background(server, rank=0)
    assert server.accept(world_size=1, timeout_s=5)
    client._channel.sock.sendall(struct.pack("<QQ", 1, MAX_FRAME_BYTES * 2))
    with pytest.raises(WorkerFailedError, match="rank 0's connection: a frame of"):
        server.receive(from_rank=0, timeout_s=5)
    client.close()
    server.close()
