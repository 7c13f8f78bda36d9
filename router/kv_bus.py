"""The KV-event bus: replicas publish their KV events and snapshots to Redis, routers fold them
into their indexes. Both ends import this module: the keys, the client, the wire format, and
the background loop each end runs.

Redis is an external input, so decoding trusts nothing: every field is checked and a bad value
raises ValueError naming it (never pickle). The format is JSON, hashes in hex:

    event batch:  {"v": 1, "events": [event, ...]}
    event:        ["S", seq, block_hash, parent_hash | null, [token, ...], [[kind, value], ...]]
                  ["R", seq, block_hash]
    snapshot:     {"v": 1, "stream_id": "1700000000000-0", "next_seq": n, "blocks": [S event, ...]}
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from worker.block_hash import BlockHash
from worker.kv_events import BlockRemoved, BlockStored, KVEvent, KVSnapshot

VERSION = 1
EVENTS_FIELD = b"events"  # the field of a stream entry that holds its encoded batch
NO_STREAM_ID = "0-0"  # "before the first entry": XREAD after it reads a stream from its start
_HASH_BYTES = hashlib.sha256().digest_size
_MAX_TOKEN = (1 << 32) - 1  # block hashes pack token ids as uint32
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


@dataclass(frozen=True)
class StreamKeys:
    """The Redis keys of one fleet's KV events; ``namespace`` separates fleets sharing a Redis."""

    namespace: str

    def __post_init__(self) -> None:
        if not self.namespace or ":" in self.namespace:
            raise ValueError(f"namespace {self.namespace!r} must be non-empty, without ':'")

    def events(self, replica_id: str) -> str:
        return f"kvfleet:{self.namespace}:events:{replica_id}"

    def snapshot(self, replica_id: str) -> str:
        return f"kvfleet:{self.namespace}:snapshot:{replica_id}"


REDIS_PASSWORD_ENV = "KVFLEET_REDIS_PASSWORD"
# TLS (a rediss:// URL): the CA that signed the server's certificate (default: the system's),
# and for mutual TLS this process's certificate and key; files, as a Secret mounts them.
REDIS_TLS_CA_ENV = "KVFLEET_REDIS_TLS_CA_FILE"
REDIS_TLS_CERT_ENV = "KVFLEET_REDIS_TLS_CERT_FILE"
REDIS_TLS_KEY_ENV = "KVFLEET_REDIS_TLS_KEY_FILE"


def redis_client(url: str, timeout_s: float = 1.0) -> Redis:
    """A client for the KV-event bus that fails fast: short timeouts, as Redis is never worth a
    stall, and no retry of a failed command, so that the caller sees it fail: a restarted Redis
    has lost the streams and snapshots, which the caller must then rewrite or re-read. (An idle
    connection the server closed is still reopened silently, so a publisher also checks that
    its keys still exist.) The password, when the URL carries none, comes from the environment
    (REDIS_PASSWORD_ENV): a Kubernetes Secret reaches a pod that way, never through a config;
    so do the TLS files of a rediss:// URL (REDIS_TLS_*_ENV), whose server certificate is
    always verified."""
    tls: dict[str, Any] = {}
    if url.startswith("rediss://"):
        tls = {
            "ssl_cert_reqs": "required",
            "ssl_ca_certs": os.environ.get(REDIS_TLS_CA_ENV) or None,
            "ssl_certfile": os.environ.get(REDIS_TLS_CERT_ENV) or None,
            "ssl_keyfile": os.environ.get(REDIS_TLS_KEY_ENV) or None,
        }
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        protocol=2,  # pins the reply shapes (XREAD: a list of [key, entries])
        password=os.environ.get(REDIS_PASSWORD_ENV) or None,  # the URL's, if it has one, wins
        **tls,
    )


class RedisLoop(abc.ABC):
    """Runs ``_step`` over and over on the loop that called ``start``; ``close`` stops it and
    closes the client. The KV-event publisher and subscriber are both one of these."""

    def __init__(self, redis_url: str, name: str) -> None:
        self._redis = redis_client(redis_url)
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the task; a second call does nothing."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        """Stop the task and close the client. Re-raises what stopped the task, if anything."""
        self._closing = True  # stops the loop even if the cancel below is lost (see _run)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

    async def _run(self) -> None:
        # Not `while True`: on Python 3.11, asyncio.wait_for (which redis-py wraps around socket
        # writes) swallows a cancellation that lands as the write completes; close() would wait
        # forever on a loop that goes on.
        while not self._closing:
            await self._step()

    @abc.abstractmethod
    async def _step(self) -> None:
        """One round of work; errors it does not handle stop the task (``close`` re-raises)."""


@dataclass(frozen=True, slots=True)
class PublishedSnapshot:
    """A replica's snapshot and the id of the last entry of its event stream it covers: a
    reader applies the snapshot, then reads the stream after ``stream_id``."""

    stream_id: str
    snapshot: KVSnapshot


def encode_events(events: list[KVEvent]) -> bytes:
    return _dump({"v": VERSION, "events": [_event_to_json(event) for event in events]})


def decode_events(data: bytes) -> list[KVEvent]:
    body = _load(data, "event batch")
    items = _get(body, "events", list, "event batch")
    return [_event_from_json(item, f"event batch: event {i}") for i, item in enumerate(items)]


def encode_snapshot(published: PublishedSnapshot) -> bytes:
    snapshot = published.snapshot
    blocks = [_event_to_json(block) for block in snapshot.blocks]
    body = {"v": VERSION, "stream_id": published.stream_id, "next_seq": snapshot.next_seq}
    return _dump({**body, "blocks": blocks})


def decode_snapshot(data: bytes) -> PublishedSnapshot:
    body = _load(data, "snapshot")
    stream_id = _get(body, "stream_id", str, "snapshot")
    if not _STREAM_ID.fullmatch(stream_id):
        raise ValueError(f"snapshot: stream_id {stream_id[:40]!r} is not a stream entry id")
    next_seq = _seq(body.get("next_seq"), "snapshot: next_seq")
    blocks = []
    for i, item in enumerate(_get(body, "blocks", list, "snapshot")):
        block = _event_from_json(item, f"snapshot: block {i}")
        if not isinstance(block, BlockStored):
            raise ValueError(f"snapshot: block {i} is not a stored block")
        blocks.append(block)
    return PublishedSnapshot(stream_id, KVSnapshot(next_seq, tuple(blocks)))


def _event_to_json(event: KVEvent) -> list[Any]:
    if isinstance(event, BlockStored):
        parent = None if event.parent_hash is None else event.parent_hash.hex()
        extra = [list(pair) for pair in event.extra_keys]
        return ["S", event.seq, event.block_hash.hex(), parent, list(event.token_ids), extra]
    return ["R", event.seq, event.block_hash.hex()]


def _event_from_json(item: object, where: str) -> KVEvent:
    if not isinstance(item, list) or not item:
        raise ValueError(f"{where}: not a non-empty list")
    kind, fields = item[0], item[1:]
    shapes = {"S": 5, "R": 2}
    if kind not in shapes:
        raise ValueError(f"{where}: unknown kind {kind!r}")
    if len(fields) != shapes[kind]:
        raise ValueError(f"{where}: kind {kind} has {shapes[kind]} fields, got {len(fields)}")
    seq = _seq(fields[0], f"{where}: seq")
    block_hash = _hash(fields[1], f"{where}: block_hash")
    if kind == "R":
        return BlockRemoved(seq, block_hash)
    parent = None if fields[2] is None else _hash(fields[2], f"{where}: parent_hash")
    tokens = _tokens(fields[3], f"{where}: token_ids")
    return BlockStored(seq, block_hash, parent, tokens, _extra_keys(fields[4], where))


def _seq(value: object, where: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{where}: {value!r} is not a non-negative integer")
    return value


def _hash(value: object, where: str) -> BlockHash:
    if not isinstance(value, str) or len(value) != 2 * _HASH_BYTES:
        raise ValueError(f"{where}: not {2 * _HASH_BYTES} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{where}: not {2 * _HASH_BYTES} hex digits") from None


def _tokens(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        type(token) is int and 0 <= token <= _MAX_TOKEN for token in value
    ):
        raise ValueError(f"{where}: not a list of uint32 token ids")
    return tuple(value)


def _extra_keys(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
        for pair in value
    ):
        raise ValueError(f"{where}: extra_keys is not a list of [kind, value] string pairs")
    return tuple((kind, key) for kind, key in value)


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{what}: not JSON ({error})") from None
    if not isinstance(body, dict):
        raise ValueError(f"{what}: not a JSON object")
    if body.get("v") != VERSION:
        raise ValueError(f"{what}: version {body.get('v')!r}, this router reads {VERSION}")
    return body


def _get(body: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        raise ValueError(f"{what}: {name} is not a {kind.__name__}")
    return value
