"""llm-d's default scoring: each scorer's rule pinned by a scripted scenario, and every decision on
random event streams from real radix caches checked against a naive model over plain lists."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preble.core.kv_events import ROOT_HASH, CacheCleared, PagesRemoved, PagesStored, chain_hashes
from preble.core.messages import LoadReport
from preble.core.pages import PageAllocator
from preble.core.radix_cache import RadixCache
from preble.core.routing.base import RequestDone, RouteRequest
from preble.core.routing.llm_d import LlmDConfig, LlmDPolicy

PS = 4
_rng = random.Random(11)


def clock() -> float:
    return 0.0


def fresh(n: int) -> list[int]:
    """Tokens no other test sequence shares."""
    return [_rng.randrange(1_000, 1 << 30) for _ in range(n)]


def make(workers=("w0", "w1", "w2"), **cfg) -> LlmDPolicy:
    policy = LlmDPolicy(clock, LlmDConfig(page_size=PS, **cfg))
    for w in workers:
        policy.add_worker(w)
    return policy


def hold(policy: LlmDPolicy, worker: str, tokens: list[int]) -> list[int]:
    """The worker reports (by KV event) that it caches the full pages of `tokens`; their hashes."""
    n = len(tokens) - len(tokens) % PS
    hashes = chain_hashes(tokens[:n], PS)
    policy.on_kv_event(worker, PagesStored(ROOT_HASH, hashes, tokens[:n]))
    return hashes


def report(policy: LlmDPolicy, worker: str, *, waiting=0, used=0, evictable=0, total=100) -> None:
    policy.on_load(LoadReport(worker, 0.0, 0, waiting, 0, used, evictable, total, PS, 0.0, 0.0, 0))


def route(policy: LlmDPolicy, tokens: list[int], rid: str = "r"):
    return policy.route(RouteRequest(rid, tokens, 10))


# ---------------------------------------------------------------------------- the naive model


class Naive:
    """llm-d's scoring over plain lists: per worker, the set of block keys it holds (a block's key
    is the tuple of every token up to its end), kept from the events alone."""

    def __init__(self, workers, weights=(3.0, 2.0, 2.0)) -> None:
        self.workers = list(workers)
        self.weights = weights
        self.keys = {w: {} for w in workers}  # worker -> page hash -> block key
        self.reports = dict.fromkeys(workers)

    def event(self, w: str, ev) -> None:
        if isinstance(ev, CacheCleared):
            self.keys[w].clear()
        elif isinstance(ev, PagesRemoved):
            for h in ev.page_hashes:
                self.keys[w].pop(h, None)
        else:
            prefix = self._tokens_of(ev.parent_hash)
            for i, h in enumerate(ev.page_hashes):
                self.keys[w][h] = prefix + tuple(ev.token_ids[:(i + 1) * PS])

    def _tokens_of(self, page: int) -> tuple:
        if page == ROOT_HASH:
            return ()
        for keys in self.keys.values():
            if page in keys:
                return keys[page]
        raise AssertionError("the scenarios never store under a page nobody holds")

    def blocks(self, w: str, prompt: list[int]) -> int:
        held = set(self.keys[w].values())
        n = 0
        while (n + 1) * PS <= len(prompt) and tuple(prompt[:(n + 1) * PS]) in held:
            n += 1
        return n

    def totals(self, prompt: list[int]) -> dict[str, float]:
        blocks = {w: self.blocks(w, prompt) for w in self.workers}
        holders = [b for b in blocks.values() if b > 0]
        waiting = {w: r.waiting if r else 0 for w, r in self.reports.items()}
        out = {}
        for w in self.workers:
            if blocks[w] == 0:
                p = 0.0
            elif max(holders) == min(holders):
                p = 1.0
            else:
                p = (blocks[w] - min(holders)) / (max(holders) - min(holders))
            q = 1.0 if max(waiting.values()) == min(waiting.values()) else \
                (max(waiting.values()) - waiting[w]) / (max(waiting.values()) - min(waiting.values()))
            r = self.reports[w]
            in_use = 0.0 if r is None else (r.kv_used_pages - r.kv_evictable_pages) / r.kv_total_pages
            k = min(1.0, max(0.0, 1.0 - in_use))
            out[w] = self.weights[0] * p + self.weights[1] * k + self.weights[2] * q
        return out


WORKERS = ("a", "b", "c", "d")
STEMS = ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 5, 6, 7, 8, 20, 21, 22, 23],
         [1, 2, 3, 4, 30, 31, 32, 33], [40, 41, 42, 43, 44, 45, 46, 47])
sequences = st.builds(lambda stem, cut, tail: stem[:cut] + tail, st.sampled_from(STEMS),
                      st.integers(0, 12), st.lists(st.integers(1, 3), max_size=6))
reports = st.builds(lambda waiting, used, evictable: (waiting, used, min(evictable, used)),
                    st.integers(0, 3), st.integers(0, 24), st.integers(0, 24))
operations = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(WORKERS), sequences),
    st.tuples(st.just("evict"), st.sampled_from(WORKERS), st.integers(1, 6)),
    st.tuples(st.just("clear"), st.sampled_from(WORKERS), st.none()),
    st.tuples(st.just("resync"), st.sampled_from(WORKERS), st.none()),
    st.tuples(st.just("report"), st.sampled_from(WORKERS), reports),
    st.tuples(st.just("route"), st.none(), sequences),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operations, max_size=40), seed=st.integers(0, 3))
def test_every_decision_matches_the_naive_model(ops, seed):
    policy = LlmDPolicy(clock, LlmDConfig(page_size=PS, seed=seed))
    naive = Naive(WORKERS)
    caches = {}
    for w in WORKERS:
        policy.add_worker(w)

        def feed(ev, w=w):
            policy.on_kv_event(w, ev)
            naive.event(w, ev)

        caches[w] = RadixCache(PageAllocator(24, PS), clock=clock, on_event=feed)
    for i, (op, w, arg) in enumerate(ops):
        cache = caches.get(w)
        if op == "insert":
            n = len(arg) // PS
            if cache.allocator.num_free < n:
                cache.evict(n - cache.allocator.num_free)
            cache.insert(arg, cache.allocator.alloc(n))
        elif op == "evict":
            cache.evict(arg)
        elif op == "clear":
            cache.clear()
        elif op == "resync":
            policy.on_resync(w, cache.dump_events())
        elif op == "report":
            waiting, used, evictable = arg
            rep = LoadReport(w, 0.0, 0, waiting, 0, used, evictable, 24, PS, 0.0, 0.0, 0)
            policy.on_load(rep)
            naive.reports[w] = rep
        else:
            d = route(policy, arg, f"r{i}")
            expected = naive.totals(arg)
            assert d.costs == pytest.approx(expected, abs=1e-12)
            top = max(d.costs.values())
            assert d.worker_id in [x for x, s in d.costs.items() if s == top]
            assert d.matched_tokens == naive.blocks(d.worker_id, arg) * PS


# ---------------------------------------------------------------------------- defaults


def test_defaults_are_the_sources():
    cfg = LlmDConfig()
    assert (cfg.prefix_weight, cfg.kv_cache_weight, cfg.queue_weight) == (3.0, 2.0, 2.0)
    assert cfg.page_size == 16
    policy = LlmDPolicy(clock)
    assert policy.name == "llm_d" and policy.tree.page_size == 16
    with pytest.raises(RuntimeError):
        policy.route(RouteRequest("r", [1, 2, 3], 1))


# ---------------------------------------------------------------------------- prefix scorer


def test_prefix_counts_full_blocks_and_min_max_normalises_among_holders():
    policy = make(workers=("w0", "w1", "w2", "w3"))
    prompt = fresh(22)  # five full blocks and two tokens that make no block
    hold(policy, "w0", prompt)  # 5 blocks
    hold(policy, "w1", prompt[:12])  # 3
    hold(policy, "w2", prompt[:8])  # 2; w3 holds nothing
    d = route(policy, prompt)
    # prefix (b - 2) / (5 - 2); KV and queue are 1 for all (no reports): 2 + 2 on top.
    assert d.costs == pytest.approx({"w0": 3 * 1.0 + 4, "w1": 3 * (1 / 3) + 4, "w2": 4.0, "w3": 4.0})
    assert (d.worker_id, d.matched_tokens) == ("w0", 20)


def test_prefix_equal_holders_all_score_one_and_a_lone_holder_scores_one():
    policy = make()
    prompt = fresh(12)
    hold(policy, "w0", prompt[:4])
    assert route(policy, prompt).costs == {"w0": 7.0, "w1": 4.0, "w2": 4.0}
    hold(policy, "w1", prompt[:4])
    assert route(policy, prompt).costs == {"w0": 7.0, "w1": 7.0, "w2": 4.0}


def test_prefix_counting_stops_at_the_first_missing_block():
    policy = make(workers=("w0", "w1"))
    prompt = fresh(16)
    hold(policy, "w0", prompt)
    hashes = hold(policy, "w1", prompt)
    policy.on_kv_event("w1", PagesRemoved([hashes[1]]))  # w1 still holds blocks 0, 2 and 3
    d = route(policy, prompt)
    assert d.costs == {"w0": 7.0, "w1": 4.0}  # 4 blocks vs 1: (1 - 1) / (4 - 1) = 0
    assert d.worker_id == "w0"
    short = route(policy, prompt[:4] + fresh(3))  # both hold the first block only: 1 each
    assert short.costs == {"w0": 7.0, "w1": 7.0}


def test_a_prompt_shorter_than_a_block_scores_no_prefix():
    policy = make(workers=("w0", "w1"))
    prompt = fresh(3)
    hold(policy, "w0", prompt + [1])
    assert route(policy, prompt).costs == {"w0": 4.0, "w1": 4.0}


# ---------------------------------------------------------------------------- load scorers


def test_queue_is_min_max_normalised_over_the_workers():
    policy = make()
    for w, q in (("w0", 10), ("w1", 5), ("w2", 0)):
        report(policy, w, waiting=q)
    d = route(policy, fresh(8))
    assert d.costs == pytest.approx({"w0": 2 + 0.0, "w1": 2 + 2 * 0.5, "w2": 2 + 2 * 1.0})
    assert d.worker_id == "w2"
    for w, q in (("w0", 12), ("w1", 6), ("w2", 4)):
        report(policy, w, waiting=q)  # the shortest queue scores 1 even when it is not empty
    assert route(policy, fresh(8)).costs == pytest.approx({"w0": 2.0, "w1": 2 + 2 * 0.75, "w2": 4.0})
    for w in ("w0", "w1", "w2"):
        report(policy, w, waiting=7)  # all equal: 1 for all
    assert route(policy, fresh(8)).costs == {"w0": 4.0, "w1": 4.0, "w2": 4.0}


def test_kv_is_one_minus_the_pages_requests_use():
    policy = make(workers=("w0", "w1"))
    report(policy, "w0", used=80, evictable=30, total=100)  # cached pages nobody uses are free
    report(policy, "w1", used=90, evictable=90, total=100)  # a full cache, all of it evictable
    assert route(policy, fresh(8)).costs == pytest.approx({"w0": 2 * 0.5 + 2, "w1": 2 * 1.0 + 2})


def test_reports_hold_until_the_next_and_routing_adds_no_load():
    policy = make(workers=("w0", "w1"))
    report(policy, "w0", waiting=0)
    report(policy, "w1", waiting=3)
    picks = [route(policy, fresh(8), f"r{i}") for i in range(5)]
    assert {d.worker_id for d in picks} == {"w0"}  # its own routings do not count against it
    assert all(d.costs == picks[0].costs for d in picks)
    policy.on_done(RequestDone("r0", "w0", 8, 0, 10, 0.1, 0.2))
    assert route(policy, fresh(8)).costs == picks[0].costs
    report(policy, "w0", waiting=6)
    assert route(policy, fresh(8)).worker_id == "w1"


# ---------------------------------------------------------------------------- weighted sum and picker


def test_prefix_weight_against_load_weights():
    """Prefix holder w0 has the longest queue and the fuller KV cache. Its total is 3 + 2 * kv0;
    w1's is 2 * kv1 + 2: w0 wins while kv1 - kv0 < 1/2."""
    policy = make(workers=("w0", "w1"))
    prompt = fresh(16)
    hold(policy, "w0", prompt)
    report(policy, "w0", waiting=4, used=60)
    report(policy, "w1", waiting=0, used=15)  # kv1 - kv0 = 0.45
    assert route(policy, prompt).worker_id == "w0"
    report(policy, "w1", waiting=0, used=5)  # 0.55
    d = route(policy, prompt)
    assert (d.worker_id, d.matched_tokens) == ("w1", 0)
    heavy = make(workers=("w0", "w1"), prefix_weight=2.0, kv_cache_weight=1.0, queue_weight=1.0)
    hold(heavy, "w0", prompt)
    report(heavy, "w0", waiting=4, used=60)
    report(heavy, "w1", waiting=0, used=5)  # 2 + 0.4 vs 0.95 + 1: the prefix still wins at 2/1/1
    assert route(heavy, prompt).worker_id == "w0"


def test_ties_are_broken_at_random_reproducibly():
    def picks(seed):
        policy = make(workers=("w0", "w1", "w2", "w3"), seed=seed)
        report(policy, "w3", waiting=1)  # w3 is never among the best
        return [route(policy, fresh(8), f"r{i}").worker_id for i in range(600)]

    assert picks(5) == picks(5)
    assert picks(5) != picks(6)
    counts = Counter(picks(5))
    assert set(counts) == {"w0", "w1", "w2"}
    assert all(150 < n < 250 for n in counts.values())


# ---------------------------------------------------------------------------- feeds


def test_clear_resync_removal_and_unknown_workers():
    policy = make(workers=("w0", "w1"))
    a, b = fresh(8), fresh(8)
    hold(policy, "w0", a[:4])
    hold(policy, "x", a)  # not a worker: ignored, so its two blocks do not rescale w0's one
    assert route(policy, a).costs == {"w0": 7.0, "w1": 4.0}
    hold(policy, "w0", a)
    policy.on_kv_event("w0", CacheCleared())
    assert route(policy, a).costs == {"w0": 4.0, "w1": 4.0}
    hold(policy, "w0", a)
    policy.on_resync("w0", [PagesStored(ROOT_HASH, chain_hashes(b, PS), b)])
    assert route(policy, a).costs == {"w0": 4.0, "w1": 4.0}
    assert route(policy, b).costs == {"w0": 7.0, "w1": 4.0}
    policy.remove_worker("w0")
    d = route(policy, b)
    assert (d.worker_id, d.costs) == ("w1", {"w1": 4.0})
    policy.add_worker("w0")  # back, knowing nothing of its cache until it says so
    assert route(policy, b).costs == {"w0": 4.0, "w1": 4.0}


def test_events_the_tree_cannot_place_are_dropped():
    policy = make(workers=("w0", "w1"))
    a = fresh(12)
    hashes = hold(policy, "w0", a)
    orphan = fresh(4)
    policy.on_kv_event("w0", PagesStored(12345, chain_hashes(orphan, PS, 12345), orphan))
    small = fresh(4)
    policy.on_kv_event("w0", PagesStored(ROOT_HASH, chain_hashes(small, 2), small))  # 2-token pages
    policy.on_kv_event("w0", PagesRemoved([hashes[2], 777]))  # one unknown: the known one still goes
    d = route(policy, a)
    assert d.matched_tokens == 8 and d.costs == {"w0": 7.0, "w1": 4.0}
    policy.on_resync("w1", [PagesStored(999, chain_hashes(a, PS, 999), a),
                            PagesStored(ROOT_HASH, hashes[:1], a[:4])])  # the good part applies
    assert route(policy, a).costs == {"w0": 7.0, "w1": 4.0 + 3 * 0.0}
    assert route(policy, a[:4]).costs == {"w0": 7.0, "w1": 7.0}
