"""Chained block hashes: the prefix-cache key, shared by the engine and the router.

    H_0 = sha256(ROOT | tokens_0 | extra_keys)      H_i = sha256(H_{i-1} | tokens_i)

A block's hash commits to every token before it, so equal hashes mean equal prefixes. Extra keys
(such as a ``cache_salt``) enter the first block only and reach the rest through the chain; each
is tagged with its kind so that different kinds of key can never collide.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

BlockHash = bytes

ROOT_HASH: BlockHash = hashlib.sha256(b"kvfleet/block-hash/v1").digest()


def extra_keys_for(cache_salt: str | None) -> tuple[tuple[str, str], ...]:
    """The tagged extra keys of a request's first block."""
    return (("cache_salt", cache_salt),) if cache_salt else ()


def hash_block(
    parent: BlockHash | None,
    token_ids: Sequence[int],
    extra_keys: tuple[tuple[str, str], ...] = (),
) -> BlockHash:
    digest = hashlib.sha256(parent if parent is not None else ROOT_HASH)
    digest.update(struct.pack(f"<{len(token_ids)}I", *token_ids))
    for kind, value in extra_keys:
        for part in (kind.encode(), value.encode()):
            digest.update(struct.pack("<I", len(part)))
            digest.update(part)
    return digest.digest()


def extend_block_hashes(
    hashes: list[BlockHash],
    token_ids: Sequence[int],
    block_size: int,
    extra_keys: tuple[tuple[str, str], ...] = (),
) -> None:
    """Append to ``hashes`` the hash of every full block of ``token_ids`` not hashed yet."""
    for index in range(len(hashes), len(token_ids) // block_size):
        parent = hashes[-1] if hashes else None
        tokens = token_ids[index * block_size : (index + 1) * block_size]
        hashes.append(hash_block(parent, tokens, extra_keys if index == 0 else ()))
