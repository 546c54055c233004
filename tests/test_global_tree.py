"""GlobalTree: a mirror of several real radix caches built from their KV events alone, router-side
TTL holdings, windowed statistics and bounded memory."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preble.core.global_tree import EventGap, GlobalTree, PageSizeMismatch
from preble.core.kv_events import ROOT_HASH, PagesRemoved, PagesStored, chain_hashes
from preble.core.pages import PageAllocator
from preble.core.radix_cache import RadixCache
from preble.core.routing.held_tokens import HeldTokens

from .clocks import ManualClock


def stored(tokens: list[int], page_size: int) -> PagesStored:
    return PagesStored(ROOT_HASH, chain_hashes(tokens, page_size), tokens)


# ---------------------------------------------------------------------------- property

PAGE = 2
WORKERS = ("a", "b", "c")
# Few distinct stems so that workers' caches share, branch and split each other's edges.
STEMS = ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [5, 5, 5, 5, 5, 5], [1, 2, 7, 7])
sequences = st.builds(lambda stem, cut, tail: stem[:cut] + tail,
                      st.sampled_from(STEMS), st.integers(0, 8),
                      st.lists(st.integers(1, 3), max_size=6))
operations = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(WORKERS), sequences),
    st.tuples(st.just("evict"), st.sampled_from(WORKERS), st.integers(1, 6)),
    st.tuples(st.just("clear"), st.sampled_from(WORKERS), st.none()),
    st.tuples(st.just("resync"), st.sampled_from(WORKERS), st.none()),
    st.tuples(st.just("rejoin"), st.sampled_from(WORKERS), st.none()),
    st.tuples(st.just("route"), st.none(), sequences),
    st.tuples(st.just("gc"), st.none(), st.floats(0, 20)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operations, max_size=40), queries=st.lists(sequences, min_size=1, max_size=8))
def test_replayed_events_mirror_every_worker_cache(ops, queries):
    clock = ManualClock()
    tree = GlobalTree(PAGE, clock, window_s=10.0, window_buckets=2)
    held_of = HeldTokens(tree, cache_size=2)  # as the default policy reads the walk: an array over the workers
    held_of.reset(["z", *WORKERS])  # "z": a worker the tree never hears of
    caches = {}
    for w in WORKERS:
        caches[w] = RadixCache(PageAllocator(12, PAGE), clock=clock,
                               on_event=lambda ev, w=w: tree.apply(w, ev))
    for op, w, arg in ops:
        clock.t += 1.0
        cache = caches.get(w)
        if op == "insert":
            n = len(arg) // PAGE
            if cache.allocator.num_free < n:
                cache.evict(n - cache.allocator.num_free)
            if cache.allocator.num_free >= n:
                cache.insert(arg, cache.allocator.alloc(n))
        elif op == "evict":
            cache.evict(arg)
        elif op == "clear":
            cache.clear()
        elif op == "resync":
            tree.replace_worker(w, cache.dump_events())
        elif op == "rejoin":
            tree.remove_worker(w)
            tree.replace_worker(w, cache.dump_events())
        elif op == "route":  # router-side insertion: statistics only, no holder
            path = tree.insert(tree.match(arg))
            if path:
                tree.record(path[-1], "a", (1.0, 0.1, 10.0))
        else:
            clock.t += arg
            tree.gc(budget=1000)
        for q in queries + [arg if isinstance(arg, list) else []]:
            m = tree.match(q)
            assert held_of(m).tolist() == [0, *(caches[w].match_len(q) for w in WORKERS)], (op, q)
            for name, c in caches.items():
                assert m.held.get(name, 0) == c.match_len(q), (op, name, q)
                for node in m.path:  # the part of the node's path the worker holds
                    assert tree.held_prefix(node, name) == min(node.end, c.match_len(q))
            assert m.cached_tokens == max(c.match_len(q) for c in caches.values())
        for name in caches:  # the maintained page count agrees with the worker's LRU
            assert tree.held_pages(name) == sum(len(n.hashes) for n in tree.lru(name))


# ---------------------------------------------------------------------------- examples


def test_partial_tail_eviction_splits_the_shared_edge():
    clock = ManualClock()
    tree = GlobalTree(2, clock)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    hashes = chain_hashes(tokens, 2)
    tree.apply("a", stored(tokens, 2))
    tree.apply("b", stored(tokens, 2))
    assert tree.num_nodes == 2
    tree.apply("a", PagesRemoved(hashes[2:]))
    m = tree.match(tokens)
    assert m.held == {"a": 4, "b": 8}
    assert [len(n.hashes) for n in m.path] == [2, 2]
    assert tree.holders(m.path[0]) == ["a", "b"] and tree.holders(m.path[1]) == ["b"]


def test_workers_and_removal():
    clock = ManualClock()
    tree = GlobalTree(2, clock)
    tree.apply("a", stored([1, 2, 3, 4], 2))
    tree.apply("b", stored([1, 2], 2))
    assert tree.match([1, 2, 3, 4, 5]).held == {"a": 4, "b": 2}
    tree.remove_worker("a")
    assert tree.match([1, 2, 3, 4]).held == {"b": 2}
    tree.replace_worker("b", [stored([9, 9], 2)])
    assert tree.match([1, 2]).held == {}
    assert tree.match([9, 9, 1]).held == {"b": 2}


def test_mismatched_page_size_and_gaps_are_rejected():
    tree = GlobalTree(4, ManualClock())
    with pytest.raises(PageSizeMismatch):
        tree.apply("a", stored([1, 2, 3, 4], 2))  # two pages of 2 tokens for a tree of 4
    with pytest.raises(EventGap):
        tree.apply("a", PagesStored(12345, chain_hashes([1, 2, 3, 4], 4, 12345), [1, 2, 3, 4]))
    with pytest.raises(EventGap):
        tree.apply("a", PagesRemoved([777]))


def test_routed_entries_expire_and_are_collected():
    clock = ManualClock()
    tree = GlobalTree(2, clock, window_s=10.0, window_buckets=2)
    tree.insert(tree.match([1, 2, 3, 4, 5]), "x", 5.0)
    assert tree.match([1, 2, 3, 4]).held == {"x": 4}
    assert tree.num_nodes == 2
    clock.t = 5.0
    assert tree.match([1, 2, 3, 4]).held == {}
    tree.gc()
    assert list(tree.lru("x")) == []  # the expired holding is gone
    assert tree.num_nodes == 2  # but the node was used within the window
    clock.t = 10.0
    assert tree.gc() == 1
    assert tree.num_nodes == 1


def test_windowed_statistics_expire_and_move_with_subtrees():
    clock = ManualClock()
    tree = GlobalTree(2, clock, window_s=10.0, window_buckets=2)
    shared = tree.insert(tree.match([1, 2, 3, 4]))
    leaf = tree.insert(tree.match([1, 2, 3, 4, 5, 6]))[-1]
    tree.record(leaf, "a", (1.0, 0.5, 10.0))
    tree.record(shared[-1], "a", (1.0, 0.25, 5.0))
    assert tree.load("a") == [2.0, 0.75, 15.0]
    assert tree.stats(leaf, "a") == [1.0, 0.5, 10.0]
    tree.move_stats(leaf, "a", "b")
    assert tree.load("a") == [1.0, 0.25, 5.0]
    assert tree.load("b") == [1.0, 0.5, 10.0]
    assert tree.stats(shared[-1], "b") == [1.0, 0.5, 10.0]
    clock.t = 10.0  # two buckets later: out of the window
    assert tree.load("a") == [0.0, 0.0, 0.0]


def test_memory_stays_flat_under_endless_distinct_prompts():
    clock = ManualClock()
    tree = GlobalTree(4, clock, window_s=10.0, window_buckets=5)
    tree.apply("w", stored(list(range(64)), 4))  # a held system prompt every prompt shares
    step = 0.01  # 100 prompts per second: 1000 per window
    peak_nodes = 0
    tracemalloc.start()
    usage = []
    for i in range(20_000):
        clock.t += step
        prompt = list(range(64)) + [100_000 + i] * 8 + [i % 7] * 5
        m = tree.match(prompt)
        path = tree.insert(m, "w", clock.t + 1.0)
        tree.record(path[-1], "w", (1.0, 0.01, 8.0))
        tree.gc(budget=16)
        peak_nodes = max(peak_nodes, tree.num_nodes)
        if i % 5000 == 4999:
            usage.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    window_prompts = 10.0 / step
    assert peak_nodes < 1.2 * window_prompts + 10
    assert usage[-1] < 1.1 * usage[1]  # flat once the window is full
