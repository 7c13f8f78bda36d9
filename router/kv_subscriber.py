"""Folds the KV events replicas publish to Redis into this router's index, in the background."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from redis.exceptions import RedisError
from redis.typing import KeyT, StreamIdT

from router.kv_bus import (
    EVENTS_FIELD,
    PublishedSnapshot,
    RedisLoop,
    StreamKeys,
    decode_events,
    decode_snapshot,
)
from router.policy import PrefixAwarePolicy
from worker.errors import UnknownReplicaError

_log = logging.getLogger(__name__)
_BLOCK_MS = 100  # one XREAD waits this long for news; also the delay before a new watch starts
_READ_COUNT = 512  # entries per stream per XREAD: bounds the time one pass holds the loop
_MAX_BACKOFF_S = 2.0
_RECONNECT_TRIES = 5  # the publisher rewrites its snapshot after reconnecting: give it time

# What XREAD returns on a RESP2 connection without decoding (redis_client pins both).
_XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


@dataclass(slots=True)
class SubscriberStats:
    connected: bool = False
    reconnects: int = 0  # times Redis answered again after a failure
    resyncs: int = 0  # snapshots applied
    rounds: int = 0  # read rounds done: an XREAD answered (news or its timeout), or an idle wait
    bad_entries: int = 0  # stream entries and snapshots that could not be decoded or applied
    lag_s: float = 0.0  # the last entry applied: from Redis storing it to the index holding it


@dataclass(slots=True)
class _Resync:
    """A snapshot a watched replica waits for."""

    min_next_seq: int  # an older snapshot does not cover the gap that asked for one
    tries_left: int | None  # None: until one comes; out of tries: read the stream from "0"
    due: float = 0.0
    delay_s: float = 0.1


@dataclass(slots=True)
class _Watch:
    cursor: str = "0"  # id of the last stream entry read
    resync: _Resync | None = None


class KVEventSubscriber(RedisLoop):
    """Keeps ``policy``'s index in step with the KV-event streams of the watched replicas.

    Membership is the owner's business, not the subscriber's: the owner calls
    ``policy.add_replica`` before ``watch`` and ``unwatch`` before ``policy.remove_replica``.
    The subscriber only feeds events and snapshots (a watched replica the policy forgot is
    unwatched, with a warning). Per watched replica:

        watch ------------> GET snapshot, once ----------+-- none: read the stream from "0"
        reconnect --------> GET snapshot, a few tries ---+
        gap in seq -------> GET snapshot until one covers the gap, reading on meanwhile
                               | found: policy.on_snapshot, read the stream after its stream id
        XREAD BLOCK over every watched stream --> policy.on_kv_events

    When Redis goes away the index stays as it is (routing goes on, on what it knows), the
    connection is retried with capped backoff, and every watched replica is resynchronised from
    its snapshot once Redis answers again. Everything runs on the loop that called ``start``:
    the policy is not thread-safe, and nothing else may touch it from another thread.
    """

    def __init__(
        self,
        redis_url: str,
        keys: StreamKeys,
        policy: PrefixAwarePolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(redis_url, "kv-subscriber")
        self.stats = SubscriberStats()
        self._keys, self._policy, self._clock = keys, policy, clock
        self._watches: dict[str, _Watch] = {}
        self._down = False
        self._backoff_s = 0.1

    @property
    def watched(self) -> list[str]:
        return list(self._watches)

    def watch(self, replica_id: str) -> None:
        """Fold the replica's events in from now on, starting from its snapshot. Raises
        UnknownReplicaError unless the policy knows the replica."""
        self._policy.index.feed(replica_id)
        if replica_id not in self._watches:
            self._watches[replica_id] = _Watch(resync=_Resync(0, tries_left=1))

    def unwatch(self, replica_id: str) -> None:
        """Stop reading the replica's stream; its entries stay in the index until the owner
        calls ``policy.remove_replica``."""
        self._watches.pop(replica_id, None)

    async def _step(self) -> None:
        try:
            if self._down:
                await self._redis.ping()
                self._reconnected()
            await self._resync_due()
            await self._read()
            self.stats.rounds += 1
            self.stats.connected = True
        except RedisError as error:
            if not self._down:
                _log.warning("KV events: Redis unreachable (%s); index kept, retrying", error)
            self._down, self.stats.connected = True, False
            await asyncio.sleep(self._backoff_s)
            self._backoff_s = min(2 * self._backoff_s, _MAX_BACKOFF_S)

    def _reconnected(self) -> None:
        # Redis may have restarted empty: the stream ids we hold may mean nothing any more.
        count = len(self._watches)
        _log.info("KV events: Redis reachable again; resynchronising %d replicas", count)
        self.stats.reconnects += 1
        self._down, self._backoff_s = False, 0.1
        for watch in self._watches.values():
            watch.resync = _Resync(0, tries_left=_RECONNECT_TRIES)

    async def _resync_due(self) -> None:
        for replica_id in self._policy.needs_resync():
            watch = self._watches.get(replica_id)
            if watch is not None and watch.resync is None:
                next_seq = self._policy.index.feed(replica_id).next_seq
                watch.resync = _Resync(next_seq, tries_left=None)
        now = time.monotonic()
        for replica_id, watch in list(self._watches.items()):
            resync = watch.resync
            if resync is None or resync.due > now:
                continue
            published = await self._get_snapshot(replica_id)
            if self._watches.get(replica_id) is not watch:
                continue  # unwatched meanwhile
            if published is not None and published.snapshot.next_seq >= resync.min_next_seq:
                watch.cursor, watch.resync = published.stream_id, None
                self._apply_snapshot(replica_id, published)
            elif resync.tries_left is not None and resync.tries_left <= 1:
                watch.resync = None
                if published is None:  # the stream is all there is: read all of it
                    watch.cursor = "0"
            else:  # not written yet, or older than the gap: keep reading and retry later
                if resync.tries_left is not None:
                    resync.tries_left -= 1
                resync.due = now + resync.delay_s
                resync.delay_s = min(2 * resync.delay_s, _MAX_BACKOFF_S)

    async def _get_snapshot(self, replica_id: str) -> PublishedSnapshot | None:
        data = await self._redis.get(self._keys.snapshot(replica_id))
        if data is None:
            return None
        try:
            return decode_snapshot(cast(bytes, data))
        except ValueError as error:
            self._bad(replica_id, "snapshot", error)
            return None

    def _apply_snapshot(self, replica_id: str, published: PublishedSnapshot) -> None:
        try:
            self._policy.on_snapshot(replica_id, published.snapshot, self._clock())
        except UnknownReplicaError:
            self._forget(replica_id)
        except ValueError as error:  # such as a block size the index does not share
            self._bad(replica_id, "snapshot", error)
        else:
            self.stats.resyncs += 1

    async def _read(self) -> None:
        watches = dict(self._watches)
        if not watches:
            await asyncio.sleep(_BLOCK_MS / 1000)
            return
        owners = {self._keys.events(replica_id): replica_id for replica_id in watches}
        streams: dict[KeyT, StreamIdT] = {
            key: watches[replica_id].cursor for key, replica_id in owners.items()
        }
        replies = await self._redis.xread(streams, count=_READ_COUNT, block=_BLOCK_MS)
        for key, entries in cast(_XReadReply, replies):
            replica_id = owners[key.decode()]
            watch = watches[replica_id]
            for entry_id, fields in entries:
                if self._watches.get(replica_id) is not watch:
                    break  # unwatched while reading, or forgotten by the policy
                watch.cursor = entry_id.decode()
                self._apply_entry(replica_id, fields)
                self.stats.lag_s = _age_s(watch.cursor)

    def _apply_entry(self, replica_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            if EVENTS_FIELD not in fields:
                raise ValueError(f"no {EVENTS_FIELD.decode()!r} field")
            events = decode_events(fields[EVENTS_FIELD])
            self._policy.on_kv_events(replica_id, events, self._clock())
        except UnknownReplicaError:
            self._forget(replica_id)
        except ValueError as error:  # undecodable, or a block size the index does not share
            self._bad(replica_id, "stream entry", error)

    def _bad(self, replica_id: str, what: str, error: Exception) -> None:
        self.stats.bad_entries += 1
        _log.warning("KV events of %s: skipped a bad %s: %s", replica_id, what, error)

    def _forget(self, replica_id: str) -> None:
        _log.warning("replica %s left the policy while watched: unwatching it", replica_id)
        self._watches.pop(replica_id, None)


def _age_s(stream_id: str) -> float:
    """Seconds since Redis stored the entry (its id starts with Redis's clock, in ms)."""
    return max(0.0, time.time() - int(stream_id.split("-", 1)[0]) / 1000)
