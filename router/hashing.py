"""Router block keys: the engine's block boundaries and salt semantics, hashed at C speed.

The engine keys its prefix cache by chained sha256 (worker/block_hash.py). Hashing a 4,096-token
prompt that way in Python costs ~400 us, four times the router's whole decision budget, so the
router keys its index with its own chained 64-bit hash over the same blocks:

    c_i = hash(tuple(tokens_i))                      CPython's tuple hash of 16 ints, in C
    key_0 = seed(cache_salt) * M + c_0               key_i = key_{i-1} * M + c_i   (mod 2**64)

``hash(int)`` is the int modulo 2**61 - 1 and the tuple hash (xxHash-style, CPython >= 3.8) only
combines element hashes, so neither depends on PYTHONHASHSEED: every router process on 64-bit
CPython computes the same keys (a test runs it in subprocesses with different seeds, and pins
values). The chain step is a multiply-add modulo 2**64, so a whole prompt's chain is a closed
form numpy evaluates in a few vectorized operations (key_i = M**i * (seed * M + sum_j c_j *
M**-j)), while a KV event's block is rehashed from its parent's key with one step. The seed of
the first block comes from the salt, tagged like the engine's ``cache_salt`` extra key: two
salts give different keys at every position (M is odd, so the difference never vanishes).

Collisions: keys are 64-bit and not cryptographic. Two prefixes share a key with a probability
of about 2**-64 per pair by accident; deliberately it is easy (the chain is linear). Either way
the router only believes that a replica holds a prefix it does not: one routing mistake, never a
wrong answer, because the engine's own cache stays keyed by sha256. Key 0 marks an empty index
slot, so a block whose key is 0 (odds 2**-64) is simply never indexed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from worker.block_hash import BlockHash

_TAG = b"kvfleet/router-key/v2"
_M = 0xC2B2AE3D27D4EB4F  # odd, so invertible modulo 2**64
_MOD = 1 << 64
_M_INVERSE = pow(_M, -1, _MOD)

Int64Array = NDArray[np.int64]


def _signed(value: int) -> int:
    return value - _MOD if value >= 1 << 63 else value


def _seed(material: bytes) -> int:
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "little", signed=True)


@functools.lru_cache(maxsize=4096)
def root_seed(cache_salt: str | None) -> int:
    """The parent key of a prompt's first block. An empty salt is no salt, as in the engine."""
    if not cache_salt:
        return _seed(_TAG)
    return _seed(_TAG + b"\0cache_salt\0" + cache_salt.encode())


def chain_key(parent: int, token_ids: Sequence[int]) -> int:
    """The key of the block holding ``token_ids`` whose parent block has key ``parent``."""
    return _signed((parent * _M + hash(tuple(token_ids))) % _MOD)


def engine_key(block_hash: BlockHash) -> int:
    """An engine sha256 block hash as a nonzero int64, the key of the router's engine-hash map."""
    return int.from_bytes(block_hash[:8], "little", signed=True) or 1


class _Powers:
    """M**i and M**-i modulo 2**64, grown on demand."""

    def __init__(self) -> None:
        self.up = self.down = np.ones(0, dtype=np.uint64)

    def first(self, n: int) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
        if n > len(self.up):
            size = max(n, 2 * len(self.up), 1024)
            self.up = _powers_of(_M, size)
            self.down = _powers_of(_M_INVERSE, size)
        return self.up[:n], self.down[:n]


def _powers_of(base: int, n: int) -> NDArray[np.uint64]:
    powers = np.empty(n, dtype=np.uint64)
    powers[0] = 1
    powers[1:] = np.cumprod(np.full(n - 1, base, dtype=np.uint64))  # wraps modulo 2**64
    return powers


_POWERS = _Powers()


class PromptBlocks:
    """A prompt's router keys, one per full block. The first key is cheap to get alone, which
    settles most prompts no replica holds; the rest are computed, all at once, when needed.

        token_ids: [ block 0 | block 1 | ... | block n-1 | partial ]
        keys():    [ key_0   | key_1   | ... | key_n-1 ]

    At most ``max_match_blocks`` can be cache hits: the engine always computes the last token.
    """

    __slots__ = (
        "_first",
        "_keys",
        "block_size",
        "cache_salt",
        "max_match_blocks",
        "num_blocks",
        "num_tokens",
        "token_ids",
    )

    def __init__(
        self, token_ids: Sequence[int], block_size: int, cache_salt: str | None = None
    ) -> None:
        self.token_ids = token_ids
        self.block_size = block_size
        self.cache_salt = cache_salt or None
        self.num_tokens = len(token_ids)
        self.num_blocks = self.num_tokens // block_size
        self.max_match_blocks = max(0, (self.num_tokens - 1) // block_size)
        self._first: int | None = None
        self._keys: Int64Array | None = None

    def first_key(self) -> int:
        """Key of block 0; the prompt must have a full block."""
        if self._first is None:
            self._first = chain_key(root_seed(self.cache_salt), self.token_ids[: self.block_size])
        return self._first

    def keys(self) -> Int64Array:
        """Keys of every full block (computed once)."""
        if self._keys is None:
            # zip over one iterator cuts the tokens into block tuples in C, hash() of each is
            # chain_key's c_i, and the chain is then the closed form of the module docstring.
            blocks = zip(*[iter(self.token_ids)] * self.block_size, strict=False)
            contents = np.fromiter(map(hash, blocks), dtype=np.int64, count=self.num_blocks)
            up, down = _POWERS.first(self.num_blocks)
            chain = np.cumsum(contents.view(np.uint64) * down)
            chain += np.uint64(root_seed(self.cache_salt) * _M % _MOD)
            self._keys = (up * chain).view(np.int64)
        return self._keys
