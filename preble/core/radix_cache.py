"""Radix tree over token ids whose edges own KV pages: the per-replica prefix cache.

Only whole pages are cached, so every edge holds a multiple of `page_size` tokens and matches are
found at page granularity. Running requests lock the path to the node they use; eviction takes
the least recently used unlocked leaf, from its tail, only as many pages as asked for. The
evictable leaves wait in a heap ordered by last use, updated where a node becomes one or is used,
so an eviction costs the pages it frees, not a walk of the tree. Every change is reported as a KV
event, so a router can mirror the tree exactly.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from .kv_events import ROOT_HASH, CacheCleared, KVEvent, PagesRemoved, PagesStored, page_hash
from .pages import PageAllocator


class TreeNode:
    __slots__ = ("id", "parent", "children", "tokens", "pages", "hashes", "lock_ref", "last_access")

    def __init__(self, node_id: int, parent: TreeNode | None, tokens: list[int], pages: list[int],
                 hashes: list[int], last_access: float) -> None:
        self.id = node_id
        self.parent = parent
        self.children: dict[tuple[int, ...], TreeNode] = {}
        self.tokens = tokens
        self.pages = pages
        self.hashes = hashes
        self.lock_ref = 0
        self.last_access = last_access

    @property
    def last_hash(self) -> int:
        return self.hashes[-1] if self.hashes else ROOT_HASH

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, tokens={len(self.tokens)}, lock={self.lock_ref})"


@dataclass(frozen=True)
class MatchResult:
    """The cached prefix of a query: its pages, in order, and the node where it ends."""

    pages: list[int]
    node: TreeNode

    def __len__(self) -> int:
        return len(self.pages)


@dataclass
class CacheStats:
    query_tokens: int = 0
    hit_tokens: int = 0

    def record(self, query_tokens: int, hit_tokens: int) -> None:
        self.query_tokens += query_tokens
        self.hit_tokens += hit_tokens

    @property
    def hit_ratio(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


class RadixCache:
    def __init__(self, allocator: PageAllocator, clock: Callable[[], float] = time.monotonic,
                 on_event: Callable[[KVEvent], None] | None = None) -> None:
        self.allocator = allocator
        self.page_size = allocator.page_size
        self.clock = clock
        self.on_event = on_event
        self.stats = CacheStats()
        self._ids = itertools.count()
        self.root = TreeNode(next(self._ids), None, [], [], [], clock())
        self.root.lock_ref = 1  # the root is never evicted
        self.evictable_pages = 0
        self.locked_pages = 0
        self.num_nodes = 1
        # (last_access, id, node) of each evictable leaf; entries made stale by a later use, a
        # lock, a child or removal are skipped when popped (`_evictable`), and compacted away
        self._lru: list[tuple[float, int, TreeNode]] = []

    # ------------------------------------------------------------------ queries

    @property
    def total_pages(self) -> int:
        return self.evictable_pages + self.locked_pages

    def _key(self, tokens: list[int], start: int) -> tuple[int, ...]:
        return tuple(tokens[start : start + self.page_size])

    def _walk(self, tokens: list[int]):
        """Yield (node, pages of it matched) along the longest cached page-aligned prefix."""
        ps = self.page_size
        node, pos = self.root, 0
        limit = len(tokens) - len(tokens) % ps
        while pos < limit:
            child = node.children.get(self._key(tokens, pos))
            if child is None:
                return
            edge = len(child.tokens)
            if pos + edge <= limit and child.tokens[ps:] == tokens[pos + ps:pos + edge]:
                n = len(child.pages)  # the whole edge matches: one slice comparison
            else:
                n = 1
                while n < len(child.pages) and pos + (n + 1) * ps <= limit and \
                        child.tokens[n * ps:(n + 1) * ps] == tokens[pos + n * ps:pos + (n + 1) * ps]:
                    n += 1
            partial = n < len(child.pages)
            yield child, n  # the consumer may split `child` here
            if partial:
                return
            node, pos = child, pos + n * ps

    def match_len(self, tokens: list[int]) -> int:
        """Length of the cached prefix of `tokens`; changes nothing (for schedulers' estimates)."""
        return sum(n for _, n in self._walk(tokens)) * self.page_size

    def match_prefix(self, tokens: list[int]) -> MatchResult:
        """Longest cached prefix of `tokens`, marking it recently used.

        A match ending inside an edge splits it, so the returned node ends exactly at the match.
        """
        now = self.clock()
        pages: list[int] = []
        node = self.root
        for child, n in self._walk(tokens):
            if n < len(child.pages):
                child = self._split(child, n)
            child.last_access = now
            pages.extend(child.pages)
            node = child
        self._offer(node)
        return MatchResult(pages, node)

    # ------------------------------------------------------------------ updates

    def insert(self, tokens: list[int], pages: list[int]) -> MatchResult:
        """Cache the full pages of `tokens`, whose KV lives in `pages` (one per full page).

        The caller hands over ownership of `pages`. Where the tree already holds a page for the
        same tokens, the caller's copy is freed and the tree's is returned in its place, so the
        result is the canonical page list the caller must use from now on.
        """
        ps = self.page_size
        n_full = len(tokens) // ps
        if len(pages) != n_full:
            raise ValueError(f"{n_full} full pages of tokens but {len(pages)} pages given")
        now = self.clock()
        out: list[int] = []
        node, pos = self.root, 0
        duplicates: list[int] = []
        for child, n in self._walk(tokens[: n_full * ps]):
            if n < len(child.pages):
                child = self._split(child, n)
            child.last_access = now
            start = pos // ps
            duplicates.extend(p for p, q in zip(pages[start:start + n], child.pages) if p != q)
            out.extend(child.pages)
            node, pos = child, pos + n * ps
        if duplicates:
            self.allocator.free(duplicates)
        if pos < n_full * ps:
            new_tokens = tokens[pos : n_full * ps]
            new_pages = pages[pos // ps : n_full]
            hashes, parent = [], node.last_hash
            for i in range(0, len(new_tokens), ps):
                parent = page_hash(parent, new_tokens[i : i + ps])
                hashes.append(parent)
            leaf = TreeNode(next(self._ids), node, list(new_tokens), list(new_pages), hashes, now)
            node.children[self._key(new_tokens, 0)] = leaf
            self.num_nodes += 1
            self.evictable_pages += len(new_pages)
            self._emit(PagesStored(node.last_hash, hashes, list(new_tokens)))
            out.extend(new_pages)
            node = leaf
        self._offer(node)
        return MatchResult(out, node)

    def lock(self, node: TreeNode) -> None:
        """Protect the path root..node from eviction while a request uses it."""
        while node is not self.root:
            if node.lock_ref == 0:
                self.evictable_pages -= len(node.pages)
                self.locked_pages += len(node.pages)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: TreeNode) -> None:
        while node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError(f"unlock of unlocked node {node}")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.evictable_pages += len(node.pages)
                self.locked_pages -= len(node.pages)
                self._offer(node)
            node = node.parent

    def evict(self, num_pages: int) -> int:
        """Free up to `num_pages` pages from least recently used unlocked leaves; return freed."""
        freed = 0
        while freed < num_pages and (leaf := self._pop_lru()) is not None:
            take = min(num_pages - freed, len(leaf.pages))
            keep = len(leaf.pages) - take
            removed_pages, removed_hashes = leaf.pages[keep:], leaf.hashes[keep:]
            self.allocator.free(removed_pages)
            self.evictable_pages -= take
            freed += take
            self._emit(PagesRemoved(removed_hashes))
            if keep:
                del leaf.pages[keep:], leaf.hashes[keep:], leaf.tokens[keep * self.page_size:]
                self._offer(leaf)
                continue
            parent = leaf.parent
            del parent.children[self._key(leaf.tokens, 0)]
            leaf.parent = None  # detached: its heap entries are stale
            self.num_nodes -= 1
            self._offer(parent)
        return freed

    def clear(self) -> None:
        """Drop every cached page; only legal when no request holds a lock."""
        if self.locked_pages:
            raise RuntimeError("cannot clear the cache while requests hold locks")
        pages = [p for n in self._nodes() for p in n.pages]
        self.allocator.free(pages)
        self.root.children.clear()
        self.evictable_pages = 0
        self.num_nodes = 1
        self._lru.clear()
        self._emit(CacheCleared())

    def dump_events(self) -> list[PagesStored]:
        """The whole tree as store events, parents first: what a subscriber needs to resync."""
        return [PagesStored(n.parent.last_hash, list(n.hashes), list(n.tokens))
                for n in self._nodes() if n is not self.root]

    # ------------------------------------------------------------------ internals

    def _split(self, node: TreeNode, n_pages: int) -> TreeNode:
        """Cut `node` after `n_pages` pages; return the new upper half."""
        cut = n_pages * self.page_size
        upper = TreeNode(next(self._ids), node.parent, node.tokens[:cut], node.pages[:n_pages],
                         node.hashes[:n_pages], node.last_access)
        upper.lock_ref = node.lock_ref
        node.parent.children[self._key(node.tokens, 0)] = upper
        node.tokens, node.pages, node.hashes = node.tokens[cut:], node.pages[n_pages:], node.hashes[n_pages:]
        node.parent = upper
        upper.children[self._key(node.tokens, 0)] = node
        self.num_nodes += 1
        return upper

    def _nodes(self):
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _evictable(self, node: TreeNode) -> bool:
        return node.parent is not None and node.lock_ref == 0 and not node.children

    def _offer(self, node: TreeNode) -> None:
        """Queue `node` for eviction if it is an evictable leaf (again: after a use, its last)."""
        if self._evictable(node):
            heapq.heappush(self._lru, (node.last_access, node.id, node))
            if len(self._lru) > 2 * self.num_nodes + 64:
                self._compact()

    def _pop_lru(self) -> TreeNode | None:
        """The least recently used evictable leaf, off the heap; None if there is none."""
        while self._lru:
            last_access, _, node = heapq.heappop(self._lru)
            if self._evictable(node) and node.last_access == last_access:
                return node
        return None

    def _compact(self) -> None:
        """Keep one current entry per evictable leaf (a clock that did not tick can repeat one)."""
        live = {e[1]: e for e in self._lru if self._evictable(e[2]) and e[2].last_access == e[0]}
        self._lru = list(live.values())
        heapq.heapify(self._lru)

    def _emit(self, event: KVEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
