"""KV events and snapshots as Redis bytes: exact round trips, and a named ValueError for
anything else."""

from __future__ import annotations

import pytest

from router.kv_bus import (
    PublishedSnapshot,
    StreamKeys,
    decode_events,
    decode_snapshot,
    encode_events,
    encode_snapshot,
)
from tests.router.replica_sim import CacheReplica
from worker.block_hash import extra_keys_for, hash_block
from worker.kv_events import BlockRemoved, BlockStored, KVEvent, KVSnapshot, SnapshotBuilder

ROOT_TOKENS = tuple(range(16))
SALT = extra_keys_for("tenant-a")
ROOT = hash_block(None, ROOT_TOKENS, SALT)
CHILD = hash_block(ROOT, ROOT_TOKENS)
HEX = ROOT.hex()


def test_event_batch_round_trips_every_kind_of_event() -> None:
    events: list[KVEvent] = [
        BlockStored(0, ROOT, None, ROOT_TOKENS, SALT),
        BlockStored(1, CHILD, ROOT, (0, 2**32 - 1, *range(14))),
        BlockRemoved(2, CHILD),
    ]
    assert decode_events(encode_events(events)) == events
    assert decode_events(encode_events([])) == []


def test_snapshot_round_trips_with_its_stream_id() -> None:
    replica, builder = CacheReplica(), SnapshotBuilder()
    replica.run(list(range(100)), cache_salt="tenant-b")
    replica.run(list(range(50)))
    builder.apply(replica.drain())
    published = PublishedSnapshot("1700000000000-3", builder.snapshot())
    assert decode_snapshot(encode_snapshot(published)) == published
    empty = PublishedSnapshot("0-0", KVSnapshot(0, ()))
    assert decode_snapshot(encode_snapshot(empty)) == empty


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v": 2, "events": []}', "version 2"),
        (b'{"v": 1}', "events is not a list"),
        (b'{"v": 1, "events": [["X", 0]]}', "event 0: unknown kind 'X'"),
        (b'{"v": 1, "events": [["R"]]}', "kind R has 2 fields, got 0"),
        (b'{"v": 1, "events": [["C", 1]]}', "unknown kind 'C'"),
        (b'{"v": 1, "events": [["R", -1, "00"]]}', "seq: -1 is not a non-negative integer"),
        (b'{"v": 1, "events": [["R", true, "00"]]}', "seq: True is not"),
        (b'{"v": 1, "events": [["R", 1.5, "00"]]}', "seq: 1.5 is not"),
        (b'{"v": 1, "events": [["R", 0, "abcd"]]}', "block_hash: not 64 hex digits"),
        (b'{"v": 1, "events": [["R", 0, "' + b"zz" * 32 + b'"]]}', "block_hash: not 64 hex"),
        (f'{{"v":1,"events":[["S",0,"{HEX}",null,[-1],[]]]}}'.encode(), "token_ids: not a list"),
        (f'{{"v":1,"events":[["S",0,"{HEX}",null,[1],[["k"]]]]}}'.encode(), "extra_keys"),
        (f'{{"v":1,"events":[["S",0,"{HEX}",7,[1],[]]]}}'.encode(), "parent_hash: not 64"),
    ],
)
def test_bad_event_batch_raises_value_error_naming_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_events(data)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"v": 1, "stream_id": "0-0", "blocks": []}', "next_seq: None is not"),
        (b'{"v": 1, "stream_id": "*", "next_seq": 0, "blocks": []}', "not a stream entry id"),
        (b'{"v": 1, "stream_id": 5, "next_seq": 0, "blocks": []}', "stream_id is not a str"),
        (
            b'{"v":1,"stream_id":"0-0","next_seq":1,"blocks":[["R",0,"' + HEX.encode() + b'"]]}',
            "block 0 is not a stored",
        ),
    ],
)
def test_bad_snapshot_raises_value_error_naming_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_snapshot(data)


def test_stream_keys_name_a_replicas_stream_and_snapshot() -> None:
    keys = StreamKeys("prod")
    assert keys.events("engine#1") == "kvfleet:prod:events:engine#1"
    assert keys.snapshot("engine#1") == "kvfleet:prod:snapshot:engine#1"
    with pytest.raises(ValueError, match="without ':'"):
        StreamKeys("a:b")
