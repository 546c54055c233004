"""KV-cache events: what a replica's prefix cache stored and removed, page by page.

A page is identified by a chained hash of its tokens and its parent's hash, so a consumer that
replays the stream rebuilds the replica's tree exactly (the layout vLLM also uses). Events are
msgspec structs: typed, cheap to encode, and safe to send over a socket.
"""

from __future__ import annotations

import hashlib
from array import array

import msgspec

ROOT_HASH = 0


def page_hash(parent: int, tokens: list[int] | tuple[int, ...]) -> int:
    """Stable 63-bit hash of one page given its parent's hash (same on every host and run)."""
    h = hashlib.blake2b(parent.to_bytes(8, "little"), digest_size=8)
    h.update(array("q", tokens).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def chain_hashes(tokens: list[int], page_size: int, parent: int = ROOT_HASH) -> list[int]:
    """Hashes of the full pages of `tokens`, chained from `parent`."""
    out = []
    for start in range(0, len(tokens) - page_size + 1, page_size):
        parent = page_hash(parent, tokens[start : start + page_size])
        out.append(parent)
    return out


class PagesStored(msgspec.Struct, tag="stored", frozen=True):
    """Consecutive pages now cached, continuing the page `parent_hash` (ROOT_HASH: the root)."""

    parent_hash: int
    page_hashes: list[int]
    token_ids: list[int]


class PagesRemoved(msgspec.Struct, tag="removed", frozen=True):
    """Pages evicted; always the deepest pages of their branch."""

    page_hashes: list[int]


class CacheCleared(msgspec.Struct, tag="cleared", frozen=True):
    """The whole cache was dropped."""


KVEvent = PagesStored | PagesRemoved | CacheCleared
