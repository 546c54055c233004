"""RadixCache and PageAllocator: worked examples plus a stateful property test.

The state machine drives the cache the way the scheduler does (match, lock, allocate the rest,
insert later, lock the new node, unlock the old one) and after every step checks page
conservation, lock accounting, tree shape and hashes, and that a mirror rebuilt only from the
KV-event stream (or from `dump_events()`) equals the tree.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from preble.core.kv_events import (
    ROOT_HASH,
    CacheCleared,
    PagesRemoved,
    PagesStored,
    chain_hashes,
)
from preble.core.pages import OutOfPages, PageAllocator
from preble.core.radix_cache import RadixCache

from .clocks import TickingClock


def make_cache(num_pages: int = 64, page_size: int = 4):
    events: list = []
    alloc = PageAllocator(num_pages, page_size)
    cache = RadixCache(alloc, clock=TickingClock(), on_event=events.append)
    return cache, alloc, events


def cache_tokens(cache: RadixCache, tokens: list[int]):
    """Allocate pages for the full pages of `tokens` and insert them."""
    n = len(tokens) // cache.page_size
    pages = cache.allocator.alloc(n)
    return cache.insert(tokens, pages)


def path_pages(cache: RadixCache, node) -> list[int]:
    chain = []
    while node is not cache.root:
        chain.append(node)
        node = node.parent
    return [p for n in reversed(chain) for p in n.pages]


def path_tokens(cache: RadixCache, node) -> list[int]:
    chain = []
    while node is not cache.root:
        chain.append(node)
        node = node.parent
    return [t for n in reversed(chain) for t in n.tokens]


# ---------------------------------------------------------------------------- examples


def test_match_on_empty_cache():
    cache, alloc, events = make_cache()
    m = cache.match_prefix([1, 2, 3, 4, 5, 6, 7, 8])
    assert m.pages == [] and len(m) == 0
    assert m.node is cache.root
    assert cache.match_len([1, 2, 3, 4]) == 0
    assert cache.match_prefix([]).node is cache.root
    assert cache.total_pages == 0 and alloc.num_free == 64
    assert events == []


def test_insert_then_match_full_and_partial():
    cache, alloc, events = make_cache(page_size=4)
    tokens = [10, 11, 12, 13, 14, 15, 16, 17]
    pages = alloc.alloc(2)
    res = cache.insert(tokens, pages)
    assert res.pages == pages
    assert cache.evictable_pages == 2 and cache.locked_pages == 0
    assert events == [PagesStored(ROOT_HASH, chain_hashes(tokens, 4), tokens)]

    # Exact match.
    m = cache.match_prefix(tokens)
    assert m.pages == pages and m.node is res.node
    # A 10-token query extending the cached 8 matches the 8 (page granularity).
    assert cache.match_len(tokens + [1, 2]) == 8
    m = cache.match_prefix(tokens + [1, 2])
    assert m.pages == pages
    # A query sharing 6 tokens matches only the first full page: 4 tokens.
    query = tokens[:6] + [99, 99]
    assert cache.match_len(query) == 4
    m = cache.match_prefix(query)
    assert m.pages == pages[:1]
    assert path_tokens(cache, m.node) == tokens[:4]
    # A query shorter than one page matches nothing.
    assert cache.match_len(tokens[:3]) == 0
    assert cache.match_prefix(tokens[:3]).pages == []


def test_match_len_is_read_only():
    cache, _, events = make_cache(page_size=2)
    cache_tokens(cache, [1, 2, 3, 4, 5, 6])
    before = cache.dump_events()
    n_events = len(events)
    assert cache.match_len([1, 2, 3, 9]) == 2
    # No split happened: still a single node under the root.
    assert len(cache.root.children) == 1
    assert len(next(iter(cache.root.children.values())).pages) == 3
    assert cache.dump_events() == before and len(events) == n_events


def test_split_keeps_both_branches_matchable():
    cache, alloc, events = make_cache(page_size=4)
    a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    b = [1, 2, 3, 4, 20, 21, 22, 23]
    ra = cache_tokens(cache, a)

    # A match that ends inside the edge splits it; the returned node ends at the match.
    m = cache.match_prefix(b)
    assert m.pages == ra.pages[:1]
    assert path_tokens(cache, m.node) == a[:4]
    assert len(m.node.children) == 1
    # Both halves still match the full original entry.
    assert cache.match_prefix(a).pages == ra.pages
    assert cache.match_len(a) == 12

    rb = cache_tokens(cache, b)
    assert rb.pages[0] == ra.pages[0]
    assert len(m.node.children) == 2
    assert cache.match_prefix(a).pages == ra.pages
    assert cache.match_prefix(b).pages == rb.pages
    assert cache.total_pages == 4 and alloc.num_free == 60
    # The split emitted nothing; b's new page continues a's first page.
    stored = [e for e in events if isinstance(e, PagesStored)]
    assert stored[-1] == PagesStored(chain_hashes(a, 4)[0], chain_hashes(b, 4)[1:], b[4:])
    # Hashes still follow the path after the split.
    for node in (m.node, *m.node.children.values()):
        assert node.hashes == chain_hashes(path_tokens(cache, node), 4)[-len(node.pages):]


def test_insert_of_cached_prefix_frees_duplicates():
    cache, alloc, events = make_cache(num_pages=16, page_size=2)
    tokens = [1, 2, 3, 4, 5, 6]
    first = cache_tokens(cache, tokens)
    assert alloc.num_free == 13
    n_events = len(events)

    # Same tokens, different page ids (computed concurrently by another request).
    dup = alloc.alloc(3)
    assert set(dup).isdisjoint(first.pages)
    assert alloc.num_free == 10
    res = cache.insert(tokens, dup)
    assert res.pages == first.pages
    assert alloc.num_free == 13
    assert set(dup) <= set(alloc._free)
    assert cache.total_pages == 3
    assert len(events) == n_events  # nothing new stored

    # Partly cached: the shared page is freed, the new tail is kept.
    longer = [1, 2, 3, 4, 5, 6, 7, 8]
    mine = alloc.alloc(4)
    res = cache.insert(longer, mine)
    assert res.pages == first.pages + mine[3:]
    assert alloc.num_free == 13 - 1
    assert set(mine[:3]) <= set(alloc._free)
    assert cache.total_pages == 4
    assert events[-1] == PagesStored(chain_hashes(tokens, 2)[-1], chain_hashes(longer, 2)[-1:], [7, 8])


def test_insert_wrong_page_count_raises():
    cache, alloc, _ = make_cache(page_size=4)
    with pytest.raises(ValueError):
        cache.insert([1, 2, 3, 4, 5], alloc.alloc(2))
    assert cache.total_pages == 0


def test_insert_ignores_trailing_partial_page():
    cache, alloc, _ = make_cache(page_size=4)
    res = cache.insert([1, 2, 3, 4, 5, 6], alloc.alloc(1))
    assert len(res.pages) == 1
    assert path_tokens(cache, res.node) == [1, 2, 3, 4]


def test_partial_leaf_eviction():
    cache, alloc, events = make_cache(num_pages=8, page_size=4)
    tokens = list(range(12))
    res = cache_tokens(cache, tokens)
    assert alloc.num_free == 5
    assert cache.evict(1) == 1
    assert alloc.num_free == 6
    assert res.pages[2] in alloc._free
    assert cache.total_pages == 2 and cache.evictable_pages == 2
    assert events[-1] == PagesRemoved(chain_hashes(tokens, 4)[2:])
    assert cache.match_len(tokens) == 8
    assert cache.match_prefix(tokens).pages == res.pages[:2]
    # The rest goes too on demand.
    assert cache.evict(5) == 2
    assert cache.total_pages == 0 and alloc.num_free == 8
    assert cache.root.children == {}


def test_lru_order():
    cache, alloc, events = make_cache(num_pages=16, page_size=2)
    a, b = [1, 1, 1, 1], [2, 2, 2, 2]
    ra = cache_tokens(cache, a)
    rb = cache_tokens(cache, b)
    # Now a is the least recently used... until it is matched.
    cache.match_prefix(a)
    assert cache.evict(2) == 2
    assert cache.match_len(a) == 4 and cache.match_len(b) == 0
    assert set(rb.pages) <= set(alloc._free)
    assert events[-1] == PagesRemoved(chain_hashes(b, 2))

    # And the other way round.
    rb = cache_tokens(cache, b)
    cache.match_prefix(b)
    assert cache.evict(1) == 1
    assert cache.match_len(a) == 2 and cache.match_len(b) == 4
    assert ra.pages[1] in alloc._free


def test_lru_eviction_walks_up_to_parents():
    cache, alloc, _ = make_cache(num_pages=16, page_size=1)
    cache_tokens(cache, [1, 2, 3])
    cache_tokens(cache, [1, 2, 4])  # splits [1,2,3] into [1,2] -> {[3], [4]}
    cache_tokens(cache, [9])
    # Freeing 4 pages must take the oldest leaves and then their emptied parent.
    cache.match_prefix([9])
    assert cache.evict(4) == 4
    assert cache.match_len([9]) == 1
    assert cache.match_len([1, 2, 3]) == 0 and cache.match_len([1, 2, 4]) == 0


def test_locked_nodes_survive_evict():
    cache, alloc, _ = make_cache(num_pages=32, page_size=2)
    keep = [1, 2, 3, 4, 5, 6]
    rk = cache_tokens(cache, keep)
    cache_tokens(cache, [1, 2, 7, 7])
    cache_tokens(cache, [8, 8, 8, 8, 8, 8])
    cache.lock(rk.node)
    assert cache.locked_pages == 3
    assert cache.evictable_pages == 4
    assert cache.evict(10**9) == 4
    assert cache.evictable_pages == 0 and cache.locked_pages == 3
    assert cache.match_prefix(keep).pages == rk.pages
    assert not set(rk.pages) & set(alloc._free)
    with pytest.raises(RuntimeError):
        cache.clear()
    cache.unlock(rk.node)
    assert cache.locked_pages == 0 and cache.evictable_pages == 3
    assert cache.evict(10**9) == 3
    assert alloc.num_free == 32


def test_lock_survives_split():
    cache, _, _ = make_cache(page_size=2)
    r = cache_tokens(cache, [1, 2, 3, 4, 5, 6])
    cache.lock(r.node)
    m = cache.match_prefix([1, 2, 3, 4, 9, 9])  # splits the locked edge
    assert m.node.lock_ref == 1 and r.node.lock_ref == 1
    assert cache.locked_pages == 3 and cache.evictable_pages == 0
    cache.unlock(r.node)
    assert m.node.lock_ref == 0 and cache.evictable_pages == 3 and cache.locked_pages == 0


def test_unlock_below_zero_raises():
    cache, _, _ = make_cache(page_size=2)
    r = cache_tokens(cache, [1, 2, 3, 4])
    with pytest.raises(RuntimeError):
        cache.unlock(r.node)
    cache.lock(r.node)
    cache.unlock(r.node)
    with pytest.raises(RuntimeError):
        cache.unlock(r.node)
    assert r.node.lock_ref == 0
    assert cache.evictable_pages == 2 and cache.locked_pages == 0


def test_clear_frees_everything_and_emits():
    cache, alloc, events = make_cache(num_pages=16, page_size=2)
    cache_tokens(cache, [1, 2, 3, 4])
    cache_tokens(cache, [1, 2, 5, 6])
    cache.clear()
    assert alloc.num_free == 16 and cache.total_pages == 0
    assert cache.root.children == {}
    assert events[-1] == CacheCleared()
    assert cache.dump_events() == []


def test_dump_events_lists_parents_first():
    cache, _, _ = make_cache(page_size=1)
    cache_tokens(cache, [1, 2, 3])
    cache_tokens(cache, [1, 2, 4])
    cache_tokens(cache, [1, 5])
    seen = {ROOT_HASH}
    for ev in cache.dump_events():
        assert ev.parent_hash in seen
        seen.update(ev.page_hashes)


# ---------------------------------------------------------------------------- PageAllocator


def test_page_allocator_conservation():
    alloc = PageAllocator(10, 4)
    assert alloc.num_free == 10 and alloc.num_used == 0
    assert alloc.pages_for(0) == 0 and alloc.pages_for(1) == 1
    assert alloc.pages_for(4) == 1 and alloc.pages_for(5) == 2
    a = alloc.alloc(3)
    b = alloc.alloc(0)
    c = alloc.alloc(7)
    assert b == []
    assert sorted(a + c) == list(range(10))
    assert alloc.num_free == 0 and alloc.num_used == 10
    with pytest.raises(OutOfPages):
        alloc.alloc(1)
    alloc.free(a)
    assert alloc.num_free == 3 and alloc.num_used == 7
    with pytest.raises(OutOfPages):
        alloc.alloc(4)
    assert alloc.num_free == 3  # a failed alloc takes nothing
    d = alloc.alloc(3)
    assert sorted(d) == sorted(a)
    alloc.free(c + d)
    assert alloc.num_free == 10
    assert sorted(alloc.alloc(10)) == list(range(10))


def test_page_allocator_negative_alloc_takes_nothing():
    alloc = PageAllocator(4, 1)
    try:
        got = alloc.alloc(-1)
    except (ValueError, OutOfPages):
        got = []
    assert got == []
    assert alloc.num_free == 4


def test_page_allocator_rejects_bad_sizes():
    with pytest.raises(ValueError):
        PageAllocator(0, 4)
    with pytest.raises(ValueError):
        PageAllocator(4, 0)


# ---------------------------------------------------------------------------- state machine


def tree_dict(cache: RadixCache) -> dict[int, tuple[int, tuple[int, ...]]]:
    """page_hash -> (parent page hash, page tokens), from walking the tree."""
    ps = cache.page_size
    out = {}
    stack = [cache.root]
    while stack:
        node = stack.pop()
        parent = node.parent.last_hash if node.parent is not None else ROOT_HASH
        for i, h in enumerate(node.hashes):
            assert h not in out, "page hash appears twice in the tree"
            out[h] = (parent, tuple(node.tokens[i * ps:(i + 1) * ps]))
            parent = h
        stack.extend(node.children.values())
    return out


def brute_force_evictions(cache: RadixCache, n: int) -> list[list[int]]:
    """The page hashes `evict(n)` must remove, event by event, found by rescanning a copy of the
    tree for its least recently used unlocked leaf before every removal."""
    nodes = {x.id: x for x in cache._nodes() if x is not cache.root}
    hashes = {i: list(x.hashes) for i, x in nodes.items()}
    children = Counter(x.parent.id for x in nodes.values())
    out: list[list[int]] = []
    while n > 0:
        leaves = [x for i, x in nodes.items() if i in hashes and not children[i] and x.lock_ref == 0]
        if not leaves:
            break
        leaf = min(leaves, key=lambda x: (x.last_access, x.id))
        take = min(n, len(hashes[leaf.id]))
        out.append(hashes[leaf.id][len(hashes[leaf.id]) - take:])
        del hashes[leaf.id][len(hashes[leaf.id]) - take:]
        n -= take
        if not hashes[leaf.id]:
            del hashes[leaf.id]
            children[leaf.parent.id] -= 1
    return out


class Mirror:
    """What a router rebuilds from the event stream alone, checking the stream's promises."""

    def __init__(self, page_size: int) -> None:
        self.ps = page_size
        self.pages: dict[int, tuple[int, tuple[int, ...]]] = {}
        self.errors: list[str] = []

    def apply(self, ev) -> None:
        ps = self.ps
        if isinstance(ev, PagesStored):
            if len(ev.token_ids) != ps * len(ev.page_hashes) or not ev.page_hashes:
                self.errors.append(f"bad stored event shape {ev}")
            if ev.parent_hash != ROOT_HASH and ev.parent_hash not in self.pages:
                self.errors.append(f"stored under unknown parent {ev}")
            parent = ev.parent_hash
            for i, h in enumerate(ev.page_hashes):
                if h in self.pages:
                    self.errors.append(f"page {h} stored twice")
                self.pages[h] = (parent, tuple(ev.token_ids[i * ps:(i + 1) * ps]))
                parent = h
        elif isinstance(ev, PagesRemoved):
            gone = set(ev.page_hashes)
            for h in ev.page_hashes:
                if h not in self.pages:
                    self.errors.append(f"removed unknown page {h}")
                self.pages.pop(h, None)
            if any(parent in gone for parent, _ in self.pages.values()):
                self.errors.append(f"removed pages that still have children: {ev}")
        elif isinstance(ev, CacheCleared):
            self.pages.clear()
        else:
            self.errors.append(f"unknown event {ev!r}")


class RadixCacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cache: RadixCache | None = None

    @initialize(page_size=st.sampled_from([1, 2, 4]), num_pages=st.sampled_from([16, 64]))
    def setup(self, page_size, num_pages):
        self.ps = page_size
        self.num_pages = num_pages
        self.clock = TickingClock()
        self.alloc = PageAllocator(num_pages, page_size)
        self.mirror = Mirror(page_size)
        self.events: list = []

        def on_event(ev):
            self.events.append(ev)
            self.mirror.apply(ev)

        self.cache = RadixCache(self.alloc, clock=self.clock, on_event=on_event)
        self.live: list = []      # nodes locked by running requests (after insert)
        self.pending: list = []   # (tokens, tree pages, own pages, locked node): before insert
        self.seen: list[list[int]] = [[0, 1, 2, 3, 0, 1, 2, 3]]

    # -------------------------------------------------------------- helpers

    def _draw_tokens(self, data) -> list[int]:
        """Often a prefix of an earlier sequence plus a random tail, so prefixes collide."""
        base = data.draw(st.sampled_from(self.seen))
        cut = data.draw(st.integers(0, len(base)))
        tail = data.draw(st.lists(st.integers(0, 3), max_size=12))
        tokens = base[:cut] + tail
        if len(self.seen) < 40:
            self.seen.append(tokens)
        return tokens

    def _start(self, tokens):
        """Admission as the scheduler does it; returns the pending entry or None if no room."""
        cache = self.cache
        n_full = len(tokens) // self.ps
        m = cache.match_prefix(tokens)
        assert len(m.pages) <= n_full
        assert path_pages(cache, m.node) == m.pages
        assert path_tokens(cache, m.node) == tokens[: len(m.pages) * self.ps]
        assert cache.match_len(tokens) == len(m.pages) * self.ps
        cache.lock(m.node)
        need = n_full - len(m.pages)
        short = need - self.alloc.num_free
        if short > 0:
            cache.evict(short)
        if self.alloc.num_free < need:
            cache.unlock(m.node)
            event("request skipped: no room")
            return None
        own = self.alloc.alloc(need)
        return (tokens, list(m.pages), own, m.node)

    def _commit(self, entry):
        tokens, tree_pages, own, old = entry
        cache = self.cache
        n_full = len(tokens) // self.ps
        res = cache.insert(tokens[: n_full * self.ps], tree_pages + own)
        if set(own) - set(res.pages):
            event("insert freed duplicate pages")
        assert len(res.pages) == n_full
        assert res.pages[: len(tree_pages)] == tree_pages  # the locked prefix cannot change
        assert path_pages(cache, res.node) == res.pages
        assert path_tokens(cache, res.node) == tokens[: n_full * self.ps]
        cache.lock(res.node)
        cache.unlock(old)
        self.live.append(res.node)

    # -------------------------------------------------------------- rules

    @rule(data=st.data())
    def request(self, data):
        """Match, lock, allocate the rest, insert, lock the new node, unlock the old one."""
        entry = self._start(self._draw_tokens(data))
        if entry is not None:
            self._commit(entry)

    @rule(data=st.data())
    def start(self, data):
        """Admit a request but leave its pages outside the tree for now (prefill running)."""
        entry = self._start(self._draw_tokens(data))
        if entry is not None:
            self.pending.append(entry)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def commit(self, data):
        """A pending request's prefill ends: insert (others may have cached the same tokens)."""
        i = data.draw(st.integers(0, len(self.pending) - 1))
        self._commit(self.pending.pop(i))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def abort(self, data):
        """A pending request is dropped: free its own pages, unlock its match."""
        i = data.draw(st.integers(0, len(self.pending) - 1))
        _, _, own, node = self.pending.pop(i)
        self.alloc.free(own)
        self.cache.unlock(node)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish(self, data):
        i = data.draw(st.integers(0, len(self.live) - 1))
        self.cache.unlock(self.live.pop(i))

    @rule(n=st.integers(0, 3) | st.integers(0, 80))
    def evict(self, n):
        cache = self.cache
        before_free = self.alloc.num_free
        before_evictable = cache.evictable_pages
        expected = brute_force_evictions(cache, n)
        n_events = len(self.events)
        freed = cache.evict(n)
        if len(expected) > 1:
            event("evict walked up to a parent or on to another leaf")
        assert freed == min(n, before_evictable)
        assert self.alloc.num_free == before_free + freed
        assert cache.evictable_pages == before_evictable - freed
        assert self.events[n_events:] == [PagesRemoved(h) for h in expected]

    @precondition(lambda self: self.cache is not None and self.cache.locked_pages == 0)
    @rule()
    def clear(self):
        self.cache.clear()
        assert self.cache.total_pages == 0
        assert isinstance(self.events[-1], CacheCleared)

    @precondition(lambda self: self.cache is not None and self.cache.locked_pages > 0)
    @rule()
    def clear_while_locked_raises(self):
        before = tree_dict(self.cache)
        free = self.alloc.num_free
        with pytest.raises(RuntimeError):
            self.cache.clear()
        assert tree_dict(self.cache) == before and self.alloc.num_free == free

    @rule(data=st.data())
    def probe(self, data):
        """match_len agrees with match_prefix and changes no pages."""
        tokens = self._draw_tokens(data)
        n = self.cache.match_len(tokens)
        before = tree_dict(self.cache)
        m = self.cache.match_prefix(tokens)
        assert n == len(m.pages) * self.ps
        assert tree_dict(self.cache) == before

    # -------------------------------------------------------------- invariants

    def _nodes(self):
        return list(self.cache._nodes())

    @invariant()
    def slots_conserved(self):
        if self.cache is None:
            return
        cache = self.cache
        tree_pages = [p for n in self._nodes() for p in n.pages]
        outside = [p for e in self.pending for p in e[2]]
        free = list(self.alloc._free)
        assert len(tree_pages) == cache.total_pages
        assert self.alloc.num_free + cache.total_pages + len(outside) == self.num_pages
        assert len(set(tree_pages)) == len(tree_pages), "page owned twice in the tree"
        assert len(set(free)) == len(free), "page freed twice"
        assert not set(tree_pages) & set(free)
        assert not set(outside) & set(free) and not set(outside) & set(tree_pages)
        assert sorted(tree_pages + outside + free) == list(range(self.num_pages))

    @invariant()
    def lock_accounting(self):
        if self.cache is None:
            return
        cache = self.cache
        expected: Counter = Counter()
        for node in self.live + [e[3] for e in self.pending]:
            while node is not cache.root:
                expected[node.id] += 1
                node = node.parent
        evictable = locked = 0
        for node in self._nodes():
            if node is cache.root:
                assert node.lock_ref == 1
                continue
            assert node.lock_ref >= 0
            assert node.lock_ref == expected[node.id], (node, expected[node.id])
            if node.lock_ref:
                locked += len(node.pages)
            else:
                evictable += len(node.pages)
        assert cache.evictable_pages == evictable
        assert cache.locked_pages == locked

    @invariant()
    def locked_nodes_attached(self):
        if self.cache is None:
            return
        cache = self.cache
        ids = {n.id for n in self._nodes()}
        free = set(self.alloc._free)
        for node in self.live + [e[3] for e in self.pending]:
            assert node is cache.root or node.id in ids
            n = node
            while n is not cache.root:
                assert n.parent is not None
                assert n.parent.children.get(tuple(n.tokens[: self.ps])) is n
                assert not set(n.pages) & free
                n = n.parent

    @invariant()
    def tree_shape_and_hashes(self):
        if self.cache is None:
            return
        cache = self.cache
        ps = self.ps
        stack = [(cache.root, [])]
        while stack:
            node, toks = stack.pop()
            if node is not cache.root:
                assert len(node.tokens) > 0 and len(node.tokens) % ps == 0
                assert len(node.pages) * ps == len(node.tokens) == len(node.hashes) * ps
                assert chain_hashes(toks, ps)[-len(node.pages):] == node.hashes
                assert node.lock_ref <= node.parent.lock_ref or node.parent is cache.root
            for key, child in node.children.items():
                assert child.parent is node
                assert key == tuple(child.tokens[:ps])
                stack.append((child, toks + child.tokens))

    @invariant()
    def events_replay(self):
        if self.cache is None:
            return
        assert self.mirror.errors == []
        truth = tree_dict(self.cache)
        assert self.mirror.pages == truth
        fresh = Mirror(self.ps)
        for ev in self.cache.dump_events():
            fresh.apply(ev)
        assert fresh.errors == []
        assert fresh.pages == truth

    def teardown(self):
        if self.cache is None:
            return
        # Release everything: the cache must then drain completely.
        for entry in self.pending:
            self.alloc.free(entry[2])
            self.cache.unlock(entry[3])
        for node in self.live:
            self.cache.unlock(node)
        assert self.cache.locked_pages == 0
        self.cache.evict(10**9)
        assert self.cache.total_pages == 0 and self.alloc.num_free == self.num_pages
        assert self.mirror.pages == {}


RadixCacheMachine.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRadixCacheMachine = RadixCacheMachine.TestCase


def test_page_allocator_refuses_a_double_free():
    alloc = PageAllocator(4, 1)
    pages = alloc.alloc(2)
    alloc.free(pages)
    with pytest.raises(RuntimeError, match="freed twice"):
        alloc.free(pages[:1])
    assert alloc.num_free == 4
