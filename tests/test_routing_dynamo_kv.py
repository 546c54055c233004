"""Dynamo's KV router: costs and choices against a naive model over plain lists on random
scenarios, then one scripted scenario per rule of the source (defaults, formula, pending prefill,
shared pages, ties, sampling, expiry, events)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preble.core.kv_events import ROOT_HASH, CacheCleared, PagesRemoved, PagesStored, chain_hashes
from preble.core.messages import LoadReport
from preble.core.routing.base import RequestDone, RouteRequest
from preble.core.routing.dynamo_kv import DynamoKV, DynamoKVConfig

from .clocks import ManualClock


def report(worker: str, waiting: int) -> LoadReport:
    return LoadReport(worker, 0.0, 0, waiting, 0, 0, 0, 100, 4, 0.0, 0.0, 0)


def done(rid: str, worker: str = "") -> RequestDone:
    return RequestDone(rid, worker, 0, 0, 0, 0.1, 0.2)


def stored(tokens: list[int], page_size: int) -> PagesStored:
    return PagesStored(ROOT_HASH, chain_hashes(tokens, page_size), tokens)


# ---------------------------------------------------------------------------- naive model


class Naive:
    """The router's rules over plain data: a worker's cache is a set of page-aligned prompt
    prefixes, its requests a list of [id, prompt, uncached tokens, prefill pending]."""

    def __init__(self, workers, page_size, weight, stale_s):
        self.ps, self.weight, self.stale_s = page_size, weight, stale_s
        self.cache = {w: set() for w in workers}
        self.active = {w: [] for w in workers}
        self.expire_at = {w: stale_s for w in workers}
        self.expiring = {w: set() for w in workers}

    def prefixes(self, prompt):
        return {tuple(prompt[:j * self.ps]) for j in range(1, len(prompt) // self.ps + 1)}

    def overlap(self, w, prompt):
        """Pages of the prompt the worker holds, counted from the first page on."""
        k = 0
        end = len(prompt) // self.ps if self.weight else 0
        while k < end and tuple(prompt[:(k + 1) * self.ps]) in self.cache[w]:
            k += 1
        return k

    def costs(self, prompt):
        out = {}
        for w, reqs in self.active.items():
            pending = sum(r[2] for r in reqs if r[3])
            used = set(self.prefixes(prompt))
            for r in reqs:
                used |= self.prefixes(r[1])
            prefill = (pending + len(prompt) - self.ps * self.overlap(w, prompt)) / self.ps
            out[w] = self.weight * prefill + len(used)
        return out

    def allowed(self, prompt):
        costs = self.costs(prompt)
        best = min(costs.values())
        tied = [w for w, c in costs.items() if c == best]
        size = {w: len(self.cache[w]) if self.overlap(w, prompt) else 0 for w in tied}
        return costs, {w for w in tied if size[w] == min(size.values())}

    def book(self, w, rid, prompt, now):
        if any(r[0] == rid for reqs in self.active.values() for r in reqs):
            return
        if now >= self.expire_at[w]:
            self.active[w] = [r for r in self.active[w] if r[0] not in self.expiring[w]]
            self.expire_at[w] = now + self.stale_s
            self.expiring[w] = {r[0] for r in self.active[w]}
        self.active[w].append([rid, prompt, len(prompt) - self.ps * self.overlap(w, prompt), True])

    def finish(self, rid):
        for w in self.active:
            self.active[w] = [r for r in self.active[w] if r[0] != rid]
            self.expiring[w].discard(rid)

    def load(self, w, waiting):
        pending = [r for r in self.active[w] if r[3]]
        for r in pending[:max(0, len(pending) - waiting)]:
            r[3] = False

    def store(self, w, prompt):
        """The event a cache sends when it stores the prompt's full pages."""
        n, k = len(prompt) // self.ps, 0
        while k < n and tuple(prompt[:(k + 1) * self.ps]) in self.cache[w]:
            k += 1
        if k == n:
            return None
        hashes = chain_hashes(prompt[:n * self.ps], self.ps)
        self.cache[w] |= self.prefixes(prompt)
        return PagesStored(hashes[k - 1] if k else ROOT_HASH, hashes[k:], prompt[k * self.ps:n * self.ps])

    def dump(self, w):
        """A full resync: one store event per held page, parents first."""
        return [PagesStored(ROOT_HASH if len(p) == self.ps else chain_hashes(list(p), self.ps)[-2],
                            [chain_hashes(list(p), self.ps)[-1]], list(p[-self.ps:]))
                for p in sorted(self.cache[w], key=len)]

    def evict(self, w, i):
        """The event for evicting one deepest page (a prefix no longer held prefix extends)."""
        held = self.cache[w]
        leaves = sorted(p for p in held if not any(len(q) > len(p) and q[:len(p)] == p for q in held))
        if not leaves:
            return None
        leaf = leaves[i % len(leaves)]
        held.discard(leaf)
        return PagesRemoved([chain_hashes(list(leaf), self.ps)[-1]])


PS = 2
WORKERS = ("a", "b", "c")
STEMS = ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9, 9, 9, 9], [5, 5, 5, 5, 5, 5], [1, 2, 7, 7])
prompts = st.builds(lambda stem, cut, tail: stem[:cut] + tail, st.sampled_from(STEMS),
                    st.integers(0, 8), st.lists(st.integers(1, 3), max_size=5)).filter(bool)
route_op = st.tuples(st.just("route"), prompts, st.integers(1, 50))
store_op = st.tuples(st.just("store"), st.sampled_from(WORKERS), prompts)
operations = st.one_of(  # routes and stores weighted up: ties, overlaps and loads build up
    route_op, route_op, route_op, store_op, store_op,
    st.tuples(st.just("done"), st.integers(0, 50), st.none()),
    st.tuples(st.just("evict"), st.sampled_from(WORKERS), st.integers(0, 20)),
    st.tuples(st.just("clear"), st.sampled_from(WORKERS), st.none()),
    st.tuples(st.just("resync"), st.sampled_from(WORKERS), st.none()),
    st.tuples(st.just("load"), st.sampled_from(WORKERS), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.floats(0, 3), st.none()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operations, min_size=20, max_size=60), weight=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
       seed=st.integers(0, 3))
def test_costs_and_choices_match_the_naive_model(ops, weight, seed):
    clock = ManualClock()
    stale = 4.0
    policy = DynamoKV(clock, DynamoKVConfig(page_size=PS, overlap_score_weight=weight,
                                            stale_request_s=stale, seed=seed))
    model = Naive(WORKERS, PS, weight, stale)
    for w in WORKERS:
        policy.add_worker(w)
    routed: list[str] = []
    for i, (op, x, y) in enumerate(ops):
        if op == "route":
            costs, allowed = model.allowed(x)
            d = policy.route(RouteRequest(f"r{i}", x, y))
            assert d.costs == pytest.approx(costs) and d.worker_id in allowed
            assert d.matched_tokens == PS * model.overlap(d.worker_id, x)
            model.book(d.worker_id, f"r{i}", x, clock.t)
            routed.append(f"r{i}")
        elif op == "done" and routed:
            rid = routed.pop(x % len(routed))
            policy.on_done(done(rid))
            model.finish(rid)
        elif op in ("store", "evict"):
            ev = model.store(x, y) if op == "store" else model.evict(x, y)
            if ev is not None:
                policy.on_kv_event(x, ev)
        elif op == "clear":
            model.cache[x].clear()
            policy.on_kv_event(x, CacheCleared())
        elif op == "resync":  # a full dump, one page per event, parents first
            policy.on_resync(x, model.dump(x))
        elif op == "load":
            policy.on_load(report(x, y))
            model.load(x, y)
        elif op == "tick":
            clock.t += x


# ---------------------------------------------------------------------------- scripted rules

P = 4  # page size of the scripted scenarios


def make(workers=("a", "b"), clock=None, **kw) -> DynamoKV:
    policy = DynamoKV(clock or ManualClock(), DynamoKVConfig(page_size=P, **kw))
    for w in workers:
        policy.add_worker(w)
    return policy


def probe(policy: DynamoKV, tokens: list[int]) -> dict[str, float]:
    """The costs a prompt would see now; the probe is finished at once, leaving no load."""
    d = policy.route(RouteRequest("probe", tokens, 1))
    policy.on_done(done("probe"))
    return d.costs


def pages(*firsts: int) -> list[int]:
    """Whole pages whose tokens all equal the given values: pages(1, 2) == [1]*4 + [2]*4."""
    return [t for f in firsts for t in [f] * P]


def test_defaults_are_dynamos():
    cfg = DynamoKVConfig()
    assert cfg.overlap_score_weight == 1.0  # KvRouterConfig default
    assert cfg.temperature == 0.0  # argmin by default
    assert cfg.stale_request_s == 300.0  # EXPIRY_DURATION
    assert cfg.page_size == 16
    with pytest.raises(ValueError):
        DynamoKVConfig(overlap_score_weight=-1.0)
    with pytest.raises(ValueError):
        DynamoKVConfig(temperature=-0.1)


def test_cost_is_weighted_prefill_blocks_plus_decode_blocks():
    policy = make()
    prompt = pages(1, 2) + [3, 3]  # 10 tokens: two full pages and a partial one
    policy.on_kv_event("a", stored(pages(1, 2), P))
    d = policy.route(RouteRequest("r1", prompt, 500))
    # a: (10 - 8) / 4 prefill blocks + 2 decode blocks; b: 10 / 4 + 2 (partial pages count
    # for prefill, not as blocks)
    assert d.costs == {"a": 2.5, "b": 4.5} and d.worker_id == "a" and d.matched_tokens == 8
    # a now also carries r1's 2 pending prefill tokens and its 2 pages
    assert probe(policy, pages(7, 8)) == {"a": (2 + 8) / 4 + 4, "b": 8 / 4 + 2}
    weighted = make(overlap_score_weight=2.0)
    weighted.on_kv_event("a", stored(pages(1, 2), P))
    assert weighted.route(RouteRequest("r1", prompt, 1)).costs == {"a": 2 * 0.5 + 2, "b": 2 * 2.5 + 2}


def test_pending_prefill_ends_with_load_reports_and_pages_with_done():
    policy = make(workers=("a",))
    policy.route(RouteRequest("r1", pages(1, 1), 1))  # 8 uncached tokens, 2 pages
    policy.route(RouteRequest("r2", pages(2, 2, 2), 1))  # 12 uncached tokens, 3 pages
    fresh = pages(9)
    assert probe(policy, fresh) == {"a": (20 + 4) / 4 + 6}
    policy.on_load(report("a", 1))  # one request may still wait: the younger one, r2
    assert probe(policy, fresh) == {"a": (12 + 4) / 4 + 6}
    policy.on_load(report("a", 0))
    assert probe(policy, fresh) == {"a": 4 / 4 + 6}
    policy.on_done(done("r2"))
    assert probe(policy, fresh) == {"a": 1 + 3}
    policy.on_done(done("r1"))
    policy.on_done(done("r1"))  # a second or unknown done changes nothing
    assert probe(policy, fresh) == {"a": 1 + 1}


def test_shared_pages_count_once_and_outputs_not_at_all():
    policy = make(workers=("a",))
    policy.route(RouteRequest("r1", pages(1, 2, 3), 10_000))
    policy.route(RouteRequest("r2", pages(1, 2, 3, 4) + [5], 10_000))
    policy.on_load(report("a", 0))
    # distinct pages: (1), (1,2), (1,2,3), (1,2,3,4); the probe shares the first two
    assert probe(policy, pages(1, 2, 6)) == {"a": 12 / 4 + 5}
    assert probe(policy, pages(2)) == {"a": 1 + 5}  # same tokens at another position: a new page


def test_ties_go_to_the_smallest_tree_then_at_random():
    for seed in range(8):
        policy = make(seed=seed)
        policy.on_kv_event("a", stored(pages(1, 5, 6, 7), P))  # 4 pages, 1 of them matching
        policy.on_kv_event("b", stored(pages(1), P))  # 1 page, matching
        d = policy.route(RouteRequest("r", pages(1, 2), 1))
        assert d.costs["a"] == d.costs["b"] and d.worker_id == "b"


def test_workers_that_miss_the_first_page_tie_with_tree_size_zero():
    for seed in range(8):
        policy = make(seed=seed)
        policy.on_kv_event("a", stored(pages(1), P))
        policy.on_kv_event("b", stored(pages(8, 8, 8, 8, 8), P))  # large, but unrelated
        assert policy.route(RouteRequest("r1", pages(1, 3), 1)).worker_id == "a"
        policy.on_load(report("a", 0))
        d = policy.route(RouteRequest("r2", pages(1, 2), 1))
        # a: 4/4 + (2 + 2 - 1) = 4 with one matching page; b: 8/4 + 2 = 4 with none. b's real
        # tree has 5 pages, but Dynamo fills tree sizes only for matching workers: b counts 0.
        assert d.costs == {"a": 4.0, "b": 4.0} and d.worker_id == "b"
    picks = set()
    for seed in range(16):  # no worker matches: all count 0, so the pick is random
        policy = make(seed=seed)
        policy.on_kv_event("a", stored(pages(8, 8, 8), P))
        picks.add(policy.route(RouteRequest("r", pages(1), 1)).worker_id)
    assert picks == {"a", "b"}


def test_temperature_samples_a_softmax_over_range_normalised_costs():
    def shares(temperature, n=3000):
        policy = make(workers=("a", "b", "c"), temperature=temperature, seed=7)
        policy.on_kv_event("a", stored(pages(1, 2), P))
        policy.on_kv_event("c", stored(pages(1), P))
        counts = dict.fromkeys("abc", 0)
        for i in range(n):
            d = policy.route(RouteRequest(f"r{i}", pages(1, 2), 1))
            assert d.costs == {"a": 2.0, "b": 4.0, "c": 3.0}
            policy.on_done(done(f"r{i}"))
            counts[d.worker_id] += 1
        return {w: c / n for w, c in counts.items()}

    for temperature in (0.5, 2.0):
        weights = {w: math.exp(-x / temperature) for w, x in {"a": 0.0, "b": 1.0, "c": 0.5}.items()}
        total = sum(weights.values())
        got = shares(temperature)
        assert all(abs(got[w] - weights[w] / total) < 0.03 for w in weights), (temperature, got)


def test_sampling_is_one_seeded_draw_against_the_running_sum_in_worker_order():
    policy = make(workers=("a", "b"), temperature=1.0, seed=3)
    policy.on_kv_event("a", stored(pages(1, 2), P))
    p_a = 1 / (1 + math.exp(-1.0))  # costs 2 and 4: normalised 0 and 1
    rng = random.Random(3)
    for i in range(200):
        d = policy.route(RouteRequest(f"r{i}", pages(1, 2), 1))
        policy.on_done(done(f"r{i}"))
        assert d.worker_id == ("a" if rng.random() <= p_a else "b")
    for seed in range(8):  # equal costs: each worker with probability 1/2
        even = make(workers=("a", "b"), temperature=1.0, seed=seed)
        pick = even.route(RouteRequest("r", pages(1), 1)).worker_id
        assert pick == ("a" if random.Random(seed).random() <= 0.5 else "b")


def test_stale_requests_expire_lazily_a_period_after_they_were_seen_active():
    clock = ManualClock()
    policy = make(workers=("a",), clock=clock)
    policy.route(RouteRequest("r1", pages(1), 1))
    policy.on_load(report("a", 0))
    clock.t = 301.0  # the first check finds no earlier snapshot: r1 stays, and is noted
    assert policy.route(RouteRequest("r2", pages(2), 1)).costs == {"a": 4 / 4 + 2}
    clock.t = 602.0  # the second check drops r1, after r3's choice was made with it
    assert policy.route(RouteRequest("r3", pages(3), 1)).costs == {"a": (4 + 4) / 4 + 3}
    policy.on_load(report("a", 0))
    assert probe(policy, pages(4)) == {"a": 4 / 4 + 3}  # r2 and r3 remain
    policy.on_done(done("r1"))  # done for an expired request: nothing to free
    assert probe(policy, pages(4)) == {"a": 4 / 4 + 3}


def test_zero_overlap_weight_ignores_the_caches():
    policy = make(overlap_score_weight=0.0)
    policy.on_kv_event("a", stored(pages(1, 2), P))
    d = policy.route(RouteRequest("r", pages(1, 2), 1))
    assert d.costs == {"a": 2.0, "b": 2.0} and d.matched_tokens == 0
    assert policy.tree.held_pages("a") == 0


def test_errors_and_duplicate_ids():
    with pytest.raises(RuntimeError):
        make(workers=()).route(RouteRequest("r", [1], 1))
    policy = make(workers=("a",))
    with pytest.raises(ValueError):
        policy.route(RouteRequest("r", [], 1))
    policy.route(RouteRequest("x", pages(1, 2), 1))
    policy.route(RouteRequest("x", pages(3, 4), 1))  # already active: not booked again
    assert probe(policy, pages(9)) == {"a": (8 + 4) / 4 + 3}
    policy.on_done(done("x"))
    assert probe(policy, pages(9)) == {"a": 1 + 1}


def test_events_of_unknown_workers_and_gaps_are_skipped_and_resync_replaces():
    policy = make()
    policy.on_kv_event("z", stored(pages(1), P))
    policy.on_kv_event("a", PagesStored(12345, chain_hashes(pages(2), P), pages(2)))  # unknown parent
    policy.on_kv_event("a", PagesRemoved([999]))
    assert policy.tree.match(pages(1, 2)).held == {}
    policy.on_kv_event("a", stored(pages(1, 2), P))
    policy.on_resync("a", [stored(pages(3), P)])
    assert policy.tree.match(pages(1, 2)).held == {} and policy.tree.match(pages(3)).held == {"a": 4}


def test_removed_worker_takes_its_requests_and_cache_along():
    policy = make()
    policy.on_kv_event("a", stored(pages(1, 2), P))
    assert policy.route(RouteRequest("r1", pages(1, 2), 1)).worker_id == "a"
    policy.remove_worker("a")
    policy.on_done(done("r1"))
    assert probe(policy, pages(1, 2)) == {"b": 2 + 2}
    policy.add_worker("a")
    assert probe(policy, pages(1, 2)) == {"b": 4.0, "a": 4.0}
