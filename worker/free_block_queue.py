"""Free KV blocks in eviction order, with O(1) removal from the middle on a prefix-cache hit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class KVBlock:
    """Metadata of one physical KV block; the bytes live in the per-layer cache tensors."""

    block_id: int
    ref_cnt: int = 0
    block_hash: bytes | None = None
    prev_free: KVBlock | None = None
    next_free: KVBlock | None = None
    in_free_queue: bool = False


class FreeBlockQueue:
    """Doubly linked list of free blocks: the head is evicted (reused) first.

        head -> [never-cached blocks] -> [cached, least recently freed] ... -> tail

    Blocks holding no cached prefix go to the head so that allocation spends them before it
    evicts anything still worth a cache hit; cached blocks go to the tail.
    """

    def __init__(self, blocks: list[KVBlock]) -> None:
        self._sentinel = KVBlock(block_id=-1)
        self._sentinel.prev_free = self._sentinel.next_free = self._sentinel
        self._len = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[KVBlock]:
        node = self._sentinel.next_free
        while node is not self._sentinel:
            assert node is not None
            yield node
            node = node.next_free

    def popleft(self) -> KVBlock:
        block = self._sentinel.next_free
        if block is None or block is self._sentinel:
            raise IndexError("no free block")
        self.remove(block)
        return block

    def append(self, block: KVBlock) -> None:
        last = self._sentinel.prev_free
        assert last is not None
        self._link(block, last, self._sentinel)

    def appendleft(self, block: KVBlock) -> None:
        first = self._sentinel.next_free
        assert first is not None
        self._link(block, self._sentinel, first)

    def remove(self, block: KVBlock) -> None:
        assert block.in_free_queue, f"block {block.block_id} is not free"
        prev, nxt = block.prev_free, block.next_free
        assert prev is not None and nxt is not None
        prev.next_free, nxt.prev_free = nxt, prev
        block.prev_free = block.next_free = None
        block.in_free_queue = False
        self._len -= 1

    def _link(self, block: KVBlock, prev: KVBlock, nxt: KVBlock) -> None:
        assert not block.in_free_queue, f"block {block.block_id} is already free"
        block.prev_free, block.next_free = prev, nxt
        prev.next_free = nxt.prev_free = block
        block.in_free_queue = True
        self._len += 1
