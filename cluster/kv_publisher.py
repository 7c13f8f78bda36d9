"""Publishes one replica's KV events to Redis, for every router of the fleet to fold in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from router.kv_bus import (
    EVENTS_FIELD,
    NO_STREAM_ID,
    PublishedSnapshot,
    RedisLoop,
    StreamKeys,
    encode_events,
    encode_snapshot,
)
from worker.kv_events import KVEvent, KVSnapshot, SnapshotBuilder

_log = logging.getLogger(__name__)
_MAX_BACKOFF_S = 2.0


@dataclass(slots=True)
class PublisherStats:
    connected: bool = False
    published_batches: int = 0
    dropped_batches: int = 0  # drained while Redis was unreachable: the next snapshot has them
    snapshots_written: int = 0
    reconnects: int = 0  # times Redis answered again after a failure


class KVEventPublisher(RedisLoop):
    """Drains a replica's KV events every ``period_s``, folds them into the replica's own
    snapshot (the truth), and publishes both to Redis:

        kvfleet:{ns}:events:{replica}     stream, one entry per non-empty batch, about
                                          ``max_stream_len`` entries kept
        kvfleet:{ns}:snapshot:{replica}   every cached block + the last stream entry it covers

    The snapshot is rewritten every ``snapshot_period_s`` when something changed, right after
    each (re)connection, and when found missing (a restart the client did not notice). Both keys
    expire ``ttl_s`` after their last write or refresh, so a dead replica's keys go away; ``close``
    deletes nothing, since routers may still read the snapshot.

    Redis never stops the draining, which the engine's bounded event log needs: while Redis is
    unreachable, batches are still drained and folded in but dropped instead of sent (the next
    snapshot covers them), and the connection is retried with capped backoff. Only one publisher
    may write a replica's keys, and a replica id is never reused by a new engine (whose event
    numbers would start again at 0).
    """

    def __init__(
        self,
        redis_url: str,
        keys: StreamKeys,
        replica_id: str,
        drain: Callable[[], Awaitable[list[KVEvent]]],
        *,
        period_s: float = 0.05,
        snapshot_period_s: float = 2.0,
        max_stream_len: int = 10_000,
        ttl_s: int = 60,
    ) -> None:
        if snapshot_period_s >= ttl_s:
            raise ValueError(f"snapshot_period_s {snapshot_period_s} must be below ttl_s {ttl_s}")
        super().__init__(redis_url, f"kv-publisher-{replica_id}")
        self.replica_id = replica_id
        self.stats = PublisherStats()
        self._stream, self._snapshot_key = keys.events(replica_id), keys.snapshot(replica_id)
        self._drain = drain
        self._period_s, self._snapshot_period_s = period_s, snapshot_period_s
        self._max_stream_len, self._ttl_s = max_stream_len, ttl_s
        self._builder = SnapshotBuilder()
        self._changed = False  # since the last snapshot written
        self._need_snapshot = True
        self._snapshot_due = 0.0
        self._down = False
        self._retry_at = 0.0
        self._backoff_s = period_s

    def snapshot(self) -> KVSnapshot:
        """What the replica holds as of the last drain: what routers must converge to."""
        return self._builder.snapshot()

    async def _step(self) -> None:
        await self._tick(time.monotonic())
        await asyncio.sleep(self._period_s)

    async def _tick(self, now: float) -> None:
        events = await self._drain()
        self._builder.apply(events)
        self._changed = self._changed or bool(events)
        if now < self._retry_at:  # backing off: the next snapshot will cover this batch
            if events:
                self.stats.dropped_batches += 1
            return
        sent = False
        try:
            if events:
                await self._publish(events)
                sent = True
            if self._need_snapshot or (self._changed and now >= self._snapshot_due):
                await self._write_snapshot(now)
            elif now >= self._snapshot_due and not await self._refresh_ttl(now):
                await self._write_snapshot(now)  # Redis lost it
        except RedisError as error:
            if events and not sent:
                self.stats.dropped_batches += 1
            self._failed(error, now)
            return
        if self._down:
            _log.info("KV events of %s: Redis reachable again", self.replica_id)
            self.stats.reconnects += 1
            self._down, self._backoff_s = False, self._period_s
        self.stats.connected = True

    def _failed(self, error: RedisError, now: float) -> None:
        if not self._down:
            _log.warning(
                "KV events of %s: Redis unreachable (%s); draining on, retrying",
                self.replica_id,
                error,
            )
        self._down, self.stats.connected = True, False
        self._need_snapshot = True
        self._retry_at = now + self._backoff_s
        self._backoff_s = min(2 * self._backoff_s, _MAX_BACKOFF_S)

    async def _publish(self, events: list[KVEvent]) -> None:
        async with self._redis.pipeline() as pipe:
            entry: dict[FieldT, EncodableT] = {EVENTS_FIELD: encode_events(events)}
            pipe.xadd(self._stream, entry, maxlen=self._max_stream_len, approximate=True)
            pipe.expire(self._stream, self._ttl_s)
            await pipe.execute()
        self.stats.published_batches += 1

    async def _write_snapshot(self, now: float) -> None:
        # This publisher is the stream's only writer, so its last entry is the last batch the
        # snapshot covers (batches dropped during an outage are in the snapshot, not the stream).
        last = await self._redis.xrevrange(self._stream, count=1)
        stream_id = cast(bytes, last[0][0]).decode() if last else NO_STREAM_ID
        data = encode_snapshot(PublishedSnapshot(stream_id, self._builder.snapshot()))
        async with self._redis.pipeline() as pipe:
            pipe.set(self._snapshot_key, data, ex=self._ttl_s)
            pipe.expire(self._stream, self._ttl_s)
            await pipe.execute()
        self._need_snapshot = self._changed = False
        self._snapshot_due = now + self._snapshot_period_s
        self.stats.snapshots_written += 1

    async def _refresh_ttl(self, now: float) -> bool:
        """Push both keys' expiry back; False if the snapshot is gone."""
        async with self._redis.pipeline() as pipe:
            pipe.expire(self._snapshot_key, self._ttl_s)
            pipe.expire(self._stream, self._ttl_s)
            snapshot_kept, _ = await pipe.execute()
        self._snapshot_due = now + self._snapshot_period_s
        return bool(snapshot_kept)
