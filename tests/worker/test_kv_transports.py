"""Each transport alone, both ends in this process: the blocks read are the blocks exported,
byte for byte, staged or read in place; what an export holds is dropped on release."""

from __future__ import annotations

import pytest
import torch

from worker.kv_transfer import nixl_transport
from worker.kv_transfer.transport import KVTransferError, make_transport, nixl_available

LAYERS, BLOCKS, SHAPE = 3, 32, (4, 2, 8)  # block_size 4, 2 heads of 8
SRC = [5, 6, 7, 20, 3, 9]
DST = [1, 2, 3, 10, 30, 4]


def _caches(fill: bool) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if fill:
        return [torch.randn(2, BLOCKS, *SHAPE, generator=generator) for _ in range(LAYERS)]
    return [torch.zeros(2, BLOCKS, *SHAPE) for _ in range(LAYERS)]


def _assert_moved(source: list[torch.Tensor], reader: list[torch.Tensor]) -> None:
    for src, dst in zip(source, reader, strict=True):
        assert torch.equal(dst[:, DST], src[:, SRC])
        untouched = [b for b in range(BLOCKS) if b not in DST]
        assert not dst[:, untouched].any(), "a block nobody asked for was written"


@pytest.mark.parametrize("staging", ["staged", "in place"])
def test_nixl_reads_exactly_the_exported_blocks(
    staging: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not nixl_available():
        pytest.skip("NIXL is not installed (the nixl extra)")
    if staging == "in place":
        monkeypatch.setattr(nixl_transport, "STAGING_BYTES", 256)  # too small for any export
    source, reader = _caches(fill=True), _caches(fill=False)
    exporter = make_transport("nixl", source, f"test-src-{staging}")
    importer = make_transport("nixl", reader, f"test-dst-{staging}")
    try:
        exported = exporter.export(SRC, "r1")
        assert isinstance(exported, nixl_transport.NixlSource)
        assert (exported.staged is not None) == (staging == "staged")
        # In two reads, the later blocks first: a decode side that holds a prefix pulls a tail.
        importer.fetch(exported, SRC[2:], DST[2:], timeout_s=10)
        importer.fetch(exported, SRC[:2], DST[:2], timeout_s=10)
        _assert_moved(source, reader)
        exporter.release("r1")
        assert exporter.arena.num_taken == 0  # type: ignore[attr-defined]
        assert importer.arena.num_taken == 0  # type: ignore[attr-defined]
    finally:
        exporter.close()
        importer.close()


def test_a_staged_source_refuses_blocks_it_did_not_stage() -> None:
    if not nixl_available():
        pytest.skip("NIXL is not installed (the nixl extra)")
    exporter = make_transport("nixl", _caches(fill=True), "test-src-refuse")
    importer = make_transport("nixl", _caches(fill=False), "test-dst-refuse")
    try:
        exported = exporter.export(SRC, "r1")
        with pytest.raises(KVTransferError, match="not staged"):
            importer.fetch(exported, [31], [0], timeout_s=10)
        with pytest.raises(KVTransferError, match="not consecutive"):
            importer.fetch(exported, [SRC[0], SRC[2]], [0, 1], timeout_s=10)
    finally:
        exporter.close()
        importer.close()


def test_the_packed_transport_carries_the_blocks_in_the_source() -> None:
    source, reader = _caches(fill=True), _caches(fill=False)
    exported = make_transport("packed", source, "unused").export(SRC, "r1")
    source[0].zero_()  # the handle holds its own copy: the source may change at once
    make_transport("packed", reader, "unused").fetch(exported, SRC, DST, timeout_s=1)
    expected = _caches(fill=True)
    _assert_moved(expected, reader)
