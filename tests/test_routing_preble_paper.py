"""The released Preble E2 scheduler (`preble_paper`): every decision checked against a naive model
that applies the release's rules the release's way (a node list scanned for children, one heap
over every node for each LRU pass, histogram scans for the loads), on random scenarios, plus
scripted scenarios that pin each rule and constant of the source."""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
import statistics
from collections import Counter
from itertools import count

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preble.core.messages import LoadReport
from preble.core.routing.base import RequestDone, RouteRequest
from preble.core.routing.preble_paper import PreblePaperConfig, PreblePaperPolicy, PrefillFit

from .clocks import ManualClock

FIT = PrefillFit()



# ---------------------------------------------------------------------------- the naive model


class N:
    def __init__(self, parent, prefix, depth, seq, workers):
        self.parent, self.prefix, self.depth, self.seq = parent, tuple(prefix), depth, seq
        self.refs = [0] * workers
        self.cached: set[int] = set()

    def seg(self):
        return self.prefix[len(self.parent.prefix):] if self.parent else ()

    def large(self):
        return len(self.seg()) > len(self.prefix) - len(self.seg())


def lcp(a, b) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


class Naive:
    """GlobalSchedulerWithTime over GPUs 0..W-1, rule by rule, with no incremental state."""

    def __init__(self, cfg: PreblePaperConfig, workers: int, clock: ManualClock) -> None:
        self.cfg, self.w, self.clock = cfg, workers, clock
        self.tick = count()
        self.root = N(None, (), 0, next(self.tick), workers)
        self.root.refs = [1] * workers  # their root starts at 1 and is never decremented
        self.nodes = [self.root]
        self.alloc: dict[N, set] = {}
        self.hist: dict[N, dict] = {}  # count, hit, prompt, miss, out
        self.window: list = []  # (time, important node, leaf)
        self.ttft: dict = {}
        self.tpots = [[cfg.tpot_initial_s] for _ in range(workers)]
        self.hit = [0.0] * workers
        self.routed = [0] * workers
        self.pending: dict = {}
        self.live = list(range(workers))  # their GPU ids are positions in this list

    # the tree
    def kids(self, node):
        return [n for n in self.nodes if n.parent is node]

    def touch(self, node):
        node.seq = next(self.tick)

    def insert(self, prompt):
        node, pos, depth = self.root, 0, 0
        while pos < len(prompt):
            child = next((c for c in self.kids(node) if c.seg()[0] == prompt[pos]), None)
            if child is None:
                leaf = N(node, prompt, depth + 1, next(self.tick), self.w)
                self.nodes.append(leaf)
                return leaf
            k = lcp(child.seg(), prompt[pos:])
            if k == len(child.seg()):
                if pos + k == len(prompt):
                    return child
                node, pos, depth = child, pos + k, depth + 1
            else:
                node, pos, depth = self.split(child, prompt[:pos + k]), pos + k, depth + 2
            self.touch(node)
        return node

    def split(self, child, prefix):
        upper = N(child.parent, prefix, child.depth, next(self.tick), self.w)
        upper.refs, upper.cached = list(child.refs), set(child.cached)
        child.parent, child.depth = upper, upper.depth + 1
        self.nodes.append(upper)
        self.alloc[upper] = set(self.alloc[child])
        if upper.large() and not child.large():
            if child in self.hist:
                self.hist[upper] = self.hist.pop(child)
                self.window = [(t, upper if n is child else n, leaf) for t, n, leaf in self.window]
            for g in self.alloc.get(child, ()):
                if (child, g) in self.ttft:
                    self.ttft[(upper, g)] = self.ttft.pop((child, g))
        return upper

    def important(self, node):
        while node is not self.root:
            if node.large():
                return node
            node = node.parent
        return None

    def path(self, leaf):
        out = []
        while leaf is not None:
            out.append(leaf)
            leaf = leaf.parent
        return out  # leaf first, root last

    # costs
    def pt(self, node):
        return FIT.seconds(len(node.seg()), len(node.prefix))

    def tpot(self, g):
        return statistics.median(self.tpots[g][-self.cfg.tpot_samples:])

    def prefill_cost(self, node):
        h = self.hist[node]
        return h["miss"] * h["count"] * self.pt(node) / len(self.alloc[node])

    def load(self, g, least=0):
        prefills, decode = [], 0
        for node, h in self.hist.items():
            if g in self.alloc.get(node, ()) and h["count"] >= least:
                prefills.append(self.prefill_cost(node))
                decode += node.refs[g] * h["out"]
        return math.fsum(prefills) + self.tpot(g) * decode

    def key(self, node):
        return (node.refs, node.seq)

    def virtual(self, leaf, g):
        heap = [(self.key(n), id(n), n) for n in self.nodes if g in n.cached]
        heapq.heapify(heap)
        got, seen = 0, set()
        while got < len(leaf.seg()) and heap:
            x = heapq.heappop(heap)[2]
            if x is self.root:
                break
            got += len(x.seg())
            seen.add(x)
            if all(c is x or g not in c.cached or c in seen for c in self.kids(x.parent)):
                heapq.heappush(heap, (self.key(x.parent), id(x.parent), x.parent))
        return math.fsum(self.evict_cost(v, g) for v in seen)

    def evict_cost(self, v, g):
        if not v.large():
            return 0.0
        h = self.hist.get(v)
        return (h["miss"] if h else 1.0) * (h["count"] if h else v.refs[g]) * self.pt(v)

    def cost(self, leaf, g):
        return self.load(g) + (self.virtual(leaf, g) if self.cfg.eviction else 0.0)

    # routing
    def route(self, rid, prompt, out):
        now = self.clock()
        leaf = self.insert(tuple(prompt))
        imp = self.important(leaf)
        n = len(leaf.seg())
        costs = {}
        if n < len(leaf.prefix) - n:
            sel = next((self.alloc[x] for x in self.path(leaf) if self.alloc.get(x)), set(self.live))
            sel = sorted(sel)
            if len(sel) > 1:
                costs = {g: self.cost(leaf, g) for g in sel}
                pos = min(range(len(sel)), key=lambda i: costs[sel[i]])
                g = self.live[pos] if self.cfg.subset_index_as_replica else sel[pos]
            else:
                g = sel[0]
            branch = "exploit"
        elif self.cfg.pd_balance and max(self.hit[g] for g in self.live) >= self.cfg.pd_hit_ratio:
            g, branch = max(self.live, key=self.hit.__getitem__), "pd"
        else:
            costs = {g: self.cost(leaf, g) for g in self.live}
            g, branch = min(self.live, key=costs.__getitem__), "explore"
        matched = next((len(x.prefix) for x in self.path(leaf)[:-1] if g in x.cached), 0)
        for x in self.path(leaf):
            self.alloc[x] = self.alloc.get(x, set()) | {g}
        for x in self.path(leaf):
            x.refs[g] += 1
            x.cached.add(g)
        if imp is not None:
            self.record(imp, leaf, out, now)
        self.routed[g] += 1
        if self.cfg.eviction:
            self.evict(g)
        if self.cfg.rebalancing and imp is not None and leaf.depth - imp.depth < self.cfg.chain_length:
            self.steal()
        self.pending[rid] = (g, leaf)
        self.prune()
        return g, branch, matched, costs

    def record(self, imp, leaf, out, now):
        h = self.hist.setdefault(imp, dict(count=0, hit=0, prompt=0, miss=1.0, out=0))
        self.window.append((now, imp, leaf))
        h["count"] += 1
        h["out"] = out
        h["hit"] += len(leaf.prefix) - len(leaf.seg())
        h["prompt"] += len(leaf.prefix)
        h["miss"] = 1 - h["hit"] / h["prompt"]
        while self.window and self.window[0][0] < now - self.cfg.window_s:
            _, node, old = self.window.pop(0)
            h = self.hist[node]
            h["count"] -= 1
            h["hit"] -= len(old.prefix) - len(old.seg())
            h["prompt"] -= len(old.prefix)
            if h["count"] <= 0:
                del self.hist[node]
                self.alloc[node] = set()

    def evict(self, g):
        held = sum(len(n.seg()) for n in self.nodes if g in n.cached)
        if held <= self.cfg.capacity_tokens:
            return
        need = held - self.cfg.capacity_tokens
        heap = [(self.key(n), id(n), n) for n in self.nodes if g in n.cached and n.refs[g] == 0]
        heapq.heapify(heap)
        got = 0
        while got < need and heap:
            x = heapq.heappop(heap)[2]
            if x is self.root:
                break
            if x.refs[g] > 0:
                continue
            if g in x.cached:
                x.cached.discard(g)
                got += len(x.seg())
                if not any(g in c.cached for c in self.kids(x.parent) if c is not x):
                    heapq.heappush(heap, (self.key(x.parent), id(x.parent), x.parent))

    def node_cost(self, node, g, tpot):
        return self.prefill_cost(node) + node.refs[g] * self.hist[node]["out"] * tpot

    def steal(self):
        if sum(self.routed[g] for g in self.live) < self.cfg.rebalance_after_per_gpu * len(self.live):
            return
        order = sorted(((g, self.load(g, self.cfg.rebalance_min_requests)) for g in self.live),
                       key=lambda e: -e[1])
        while len(order) > 1:
            (big, hi), (small, lo) = order[0], order[-1]
            if hi < self.cfg.high_load_ratio * lo:
                return
            tpot = self.tpot(big)
            heap = [(self.node_cost(n, big, tpot), self.key(n), id(n), n) for n, h in self.hist.items()
                    if big in self.alloc[n] and n.large() and h["count"] >= self.cfg.rebalance_min_requests]
            heapq.heapify(heap)
            if len(heap) == 1:
                cost, node = heap[0][0] / 2, heap[0][3]
                if small not in self.alloc[node] and self.overloaded(node, big):
                    lo += cost
                    self.alloc[node].add(small)
                    self.ttft.pop((node, big), None)
            else:
                while heap:
                    cost, _, _, node = heapq.heappop(heap)
                    if hi - cost < lo + cost:
                        break
                    hi -= cost
                    lo += cost
                    stack = [node]
                    while stack:
                        x = stack.pop()
                        self.alloc[x] = {small}
                        stack.extend(self.kids(x))
                    if hi < self.cfg.high_load_ratio * lo:
                        break
            order[-1] = (small, lo)
            order = order[1:]

    def overloaded(self, node, g):
        data = self.ttft.get((node, g), [])
        cut = self.clock() - self.cfg.ttft_window_s / 2
        old, new = [v for t, v in data if t < cut], [v for t, v in data if t >= cut]
        return bool(old and new) and \
            math.fsum(new) / len(new) >= self.cfg.overload_ratio * (math.fsum(old) / len(old))

    def done(self, rid, ttft, latency, out, ok):
        g, leaf = self.pending.pop(rid)
        for x in reversed(self.path(leaf)):
            self.touch(x)
        imp = self.important(leaf)
        if imp is not None:
            data = self.ttft.setdefault((imp, g), [])
            data.append((self.clock(), ttft))
            while data and data[0][0] < self.clock() - self.cfg.ttft_window_s:
                data.pop(0)
        for x in self.path(leaf)[:-1]:
            x.refs[g] -= 1
        if ok and out != 1 and (latency - ttft) / max(1, out) != 0:
            self.tpots[g].append((latency - ttft) / max(1, out))
        self.prune()

    def remove(self, g):
        """Not in the release (its GPUs are fixed): the GPU leaves every allocation, hold and count."""
        self.live.remove(g)
        for n in self.nodes:
            n.refs[g] = 0
            n.cached.discard(g)
            if n in self.alloc:
                self.alloc[n].discard(g)
        self.ttft = {k: v for k, v in self.ttft.items() if k[1] != g}
        self.pending = {r: p for r, p in self.pending.items() if p[0] != g}
        self.prune()

    def prune(self):
        """Drop leaves no GPU holds, nobody runs through and the window does not name, to a fixed point."""
        named = {n for _, imp, leaf in self.window for n in (imp, leaf)} | set(self.hist)
        while True:
            dead = [n for n in self.nodes if n is not self.root and not self.kids(n) and not n.cached
                    and not any(n.refs) and n not in named]
            if not dead:
                return
            for n in dead:
                self.nodes.remove(n)
                self.alloc.pop(n, None)
                for g in range(self.w):
                    self.ttft.pop((n, g), None)


# ---------------------------------------------------------------------------- randomised scenarios

W = 3
IDS = [f"w{g}" for g in range(W)]
TEST_CFG = PreblePaperConfig(window_s=40.0, ttft_window_s=30.0, capacity_tokens=90,
                             rebalance_after_per_gpu=2, tpot_samples=5)

op = st.one_of(
    st.tuples(st.just("route"), st.integers(0, 3), st.integers(0, 40), st.integers(1, 30), st.integers(1, 200)),
    st.tuples(st.just("done"), st.integers(0, 50), st.floats(0.01, 3.0), st.floats(0.0, 5.0),
              st.integers(0, 40), st.booleans()),
    st.tuples(st.just("tick"), st.floats(0.0, 30.0)),
    st.tuples(st.just("report"), st.integers(0, W - 1), st.sampled_from([0.0, 0.5, 0.69, 0.7, 0.9])),
)
with_removal = st.one_of(op, st.tuples(st.just("remove"), st.integers(0, W - 1)))


def prompt_of(rng: random.Random, base: int, cut: int, extra: int) -> list[int]:
    """Prompts that share prefixes often and diverge at many places (a 3-token alphabet)."""
    bases = [[1, 2, 3] * 30, [1, 2, 1] * 30, [2, 3, 3] * 30, [3] * 90]
    return bases[base][:cut] + [rng.randrange(1, 4) for _ in range(extra)]


def run_both(ops, cfg: PreblePaperConfig, seed: int = 0) -> Counter:
    """Play the ops on the policy and the model; every decision, load and held size must agree.
    Returns how often each branch was taken."""
    clock = ManualClock()
    policy = PreblePaperPolicy(clock, cfg)
    for w in IDS:
        policy.add_worker(w)
    model = Naive(cfg, W, clock)
    rng = random.Random(seed)
    live: list[str] = []
    branches: Counter = Counter()
    for i, o in enumerate(ops):
        if o[0] == "route":
            _, base, cut, extra, out = o
            tokens = prompt_of(rng, base, cut, extra)
            d = policy.route(RouteRequest(f"r{i}", tokens, out))
            g, branch, matched, costs = model.route(f"r{i}", tokens, out)
            assert (d.worker_id, d.branch, d.matched_tokens) == (IDS[g], branch, matched), f"op {i}"
            assert d.costs == {IDS[s]: c for s, c in costs.items()}, f"op {i}"
            live.append(f"r{i}")
            branches[branch] += 1
        elif o[0] == "done" and live:
            _, k, ttft, decode, out, ok = o
            rid = live.pop(k % len(live))
            g = model.pending[rid][0]
            policy.on_done(RequestDone(rid, IDS[g], 0, 0, out, ttft, ttft + decode, ok))
            model.done(rid, ttft, ttft + decode, out, ok)
        elif o[0] == "tick":
            clock.t += o[1]
        elif o[0] == "report":
            _, g, ratio = o
            policy.on_load(LoadReport(IDS[g], clock.t, 0, 0, 0, 0, 0, 100, 16, ratio, 0.0, 0))
            model.hit[g] = ratio
        elif o[0] == "remove" and len(model.live) > 1 and o[1] in model.live:
            policy.remove_worker(IDS[o[1]])
            model.remove(o[1])
            live = [r for r in live if r in model.pending]
        for g in model.live:
            assert policy.load_of(IDS[g]) == model.load(g)
            assert policy._slots[g].allocated == sum(len(n.seg()) for n in model.nodes if g in n.cached)
        assert count_nodes(policy) == len(model.nodes)
        check_bookkeeping(policy)
    return branches


def check_bookkeeping(policy: PreblePaperPolicy) -> None:
    """The policy's incremental state agrees with its own tree: windowed nodes below each node,
    children held per GPU, and each GPU's idle list (held, nothing running, least recent first)."""
    nodes = []

    def walk(node):
        nodes.append(node)
        below = (node.stat is not None) + sum(walk(c) for c in node.children.values())
        assert below == node.below
        return below

    for child in policy.root.children.values():
        walk(child)
    for node in [policy.root] + nodes:
        held = Counter(s for c in node.children.values() for s in c.cached)
        assert node.kids == dict(held)
    for w in policy._order:
        idle = [n for n in nodes if w.slot in n.cached and not n.active]
        assert list(w.idle) == sorted(idle, key=lambda n: n.seq)
        assert w.busy == {n for n in nodes if w.slot in n.cached and n.active}


def count_nodes(policy: PreblePaperPolicy) -> int:
    n, stack = 0, [policy.root]
    while stack:
        node = stack.pop()
        n += 1
        stack.extend(node.children.values())
    return n


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(op, min_size=1, max_size=80), st.integers(0, 10**6))
def test_every_decision_matches_the_naive_model(ops, seed):
    run_both(ops, TEST_CFG, seed)


@SETTINGS
@given(st.lists(op, min_size=1, max_size=80), st.integers(0, 10**6))
def test_matches_the_model_with_the_subset_index_fixed_and_no_pd(ops, seed):
    run_both(ops, PreblePaperConfig(window_s=40.0, capacity_tokens=60, rebalance_after_per_gpu=1,
                                    subset_index_as_replica=False, pd_balance=False), seed)


@settings(max_examples=40, deadline=None)
@given(st.lists(op, min_size=1, max_size=80), st.integers(0, 10**6))
def test_matches_the_model_without_eviction_or_rebalancing(ops, seed):
    run_both(ops, PreblePaperConfig(window_s=40.0, eviction=False, rebalancing=False), seed)


@settings(max_examples=40, deadline=None)
@given(st.lists(with_removal, min_size=1, max_size=80), st.integers(0, 10**6))
def test_matches_the_model_when_workers_are_removed(ops, seed):
    run_both(ops, dataclasses.replace(TEST_CFG, rebalance_after_per_gpu=4), seed)


def seeded_ops(seed: int, n: int = 400, remove_at: int | None = None) -> list:
    rng = random.Random(seed)
    ops = []
    for i in range(n):
        r = rng.random()
        if i == remove_at:
            ops.append(("remove", rng.randrange(W)))
        elif r < 0.5:
            ops.append(("route", rng.randrange(4), rng.randrange(41), rng.randrange(1, 31), rng.randrange(1, 200)))
        elif r < 0.85:
            ops.append(("done", rng.randrange(50), rng.uniform(0.01, 3), rng.uniform(0, 5), rng.randrange(41),
                        rng.random() < 0.9))
        elif r < 0.97:
            ops.append(("tick", rng.uniform(0, 8)))
        else:
            ops.append(("report", rng.randrange(W), rng.choice([0.0, 0.8])))
    return ops


def test_long_seeded_runs_match_and_exercise_every_branch():
    """Longer runs than hypothesis draws, with rebalancing and real eviction under way."""
    branches: Counter = Counter()
    for seed in range(3):
        branches += run_both(seeded_ops(seed), TEST_CFG, seed)
    assert set(branches) == {"exploit", "explore", "pd"} and sum(branches.values()) > 450


@pytest.mark.parametrize("seed, remove_at, gate", [(s, at, gate) for s in range(4) for at, gate in ((12, 3), (250, 2))])
def test_long_seeded_runs_match_across_a_removal(seed, remove_at, gate):
    """A worker leaves early (the rebalancing gate then counts the others' requests only) or
    after many moves (allocations still on their way down the tree must survive it)."""
    run_both(seeded_ops(seed, 400, remove_at), dataclasses.replace(TEST_CFG, rebalance_after_per_gpu=gate), seed)


def test_the_tree_matches_longest_common_prefixes_with_every_earlier_prompt():
    """Where a prompt's own node starts is the longest common prefix it shares with any earlier
    prompt (below its own length); it exploits iff it has fewer tokens of its own than that."""

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=12), min_size=1, max_size=30))
    def check(prompts):
        policy, _ = make(1, eviction=False, rebalancing=False)
        for i, p in enumerate(prompts):
            start = max([k for k in (lcp(p, q) for q in prompts[:i]) if k < len(p)], default=0)
            assert route(policy, p)[1].branch == ("exploit" if len(p) - start < start else "explore")

    check()


# ---------------------------------------------------------------------------- scripted scenarios

_rids = count()
_rng = random.Random(11)
FLAT = PrefillFit(small_ms=125.0, attn_short_ms=0.0, efficiency=1.0)  # 0.125 s for any short node: exact sums
PT = (22 / 1e3 + 0.32 / 1e3) / 0.9  # their fit for a node under 192 tokens ending within 1024: 0.0248 s


def fresh(n: int) -> list[int]:
    return [_rng.randrange(10_000, 1 << 40) for _ in range(n)]


def make(workers: int = 2, **cfg) -> tuple[PreblePaperPolicy, ManualClock]:
    clock = ManualClock()
    policy = PreblePaperPolicy(clock, PreblePaperConfig(**cfg))
    for g in range(workers):
        policy.add_worker(f"w{g}")
    return policy, clock


def route(policy, tokens, out=0):
    rid = f"q{next(_rids)}"
    return rid, policy.route(RouteRequest(rid, tokens, out))


def finish(policy, rid, worker, ttft=0.5, latency=1.0, out=5, ok=True):
    policy.on_done(RequestDone(rid, worker, 0, 0, out, ttft, latency, ok))


def report(policy, worker, hit_ratio):
    policy.on_load(LoadReport(worker, 0.0, 0, 0, 0, 0, 0, 100, 16, hit_ratio, 0.0, 0))


def test_defaults_are_the_release_constants():
    cfg = PreblePaperConfig()
    assert (cfg.window_s, cfg.ttft_window_s, cfg.capacity_tokens) == (180.0, 180.0, 198_516)
    assert (cfg.high_load_ratio, cfg.rebalance_after_per_gpu, cfg.rebalance_min_requests) == (1.5, 50, 2)
    assert (cfg.chain_length, cfg.overload_ratio, cfg.tpot_initial_s, cfg.tpot_samples) == (3, 2.0, 0.15, 200)
    assert (cfg.pd_hit_ratio, cfg.unseen_miss_rate) == (0.7, 1.0)
    assert cfg.eviction and cfg.rebalancing and cfg.pd_balance and cfg.subset_index_as_replica
    assert PreblePaperPolicy(ManualClock()).name == "preble_paper"


@pytest.mark.parametrize("new, context, ms", [
    (100, 500, 22 + 0.32),  # short: flat 22 ms, short-context attention
    (191, 1024, 22 + 0.32),
    (192, 1025, -118 + 1.25 * 192 - 2.56e-3 * 192 ** 2 + (1.86e-4 * 1025 + 0.159) / 2),
    (383, 383, -14.77384 + 0.32),  # their quadratic dips below zero near 384
    (300, 2000, 26.6 + 0.531 / 2),  # attention halved for extends of at most 1024
    (384, 100, 0.10842571 * 384 + 4.209777054806409 + 0.32),
    (2000, 3000, 221.06119708 + 0.717 + 20.65),  # long extend: no halving, the n x context term
])
def test_prefill_fit_is_theirs_piece_by_piece(new, context, ms):
    assert FIT.seconds(new, context) == pytest.approx(ms / 1e3 / 0.9, rel=1e-9)


def test_exploit_only_when_its_own_tokens_are_fewer_than_the_shared_ones():
    policy, _ = make(2)
    prefix = fresh(10)
    assert route(policy, prefix)[1].branch == "explore"
    _, d = route(policy, prefix + fresh(9))
    assert (d.worker_id, d.branch, d.matched_tokens, d.costs) == ("w0", "exploit", 10, {})  # w1 idle: no matter
    _, d = route(policy, prefix + fresh(10))
    assert d.branch == "explore" and set(d.costs) == {"w0", "w1"}


def test_load_is_windowed_prefill_plus_running_decode_at_the_median_tpot():
    policy, _ = make(1)
    a = fresh(10)
    rid, _ = route(policy, a, out=7)
    assert policy.load_of("w0") == 1.0 * 1 * PT + 0.15 * 7  # miss 1, one request, 7 tokens at 0.15 s
    finish(policy, rid, "w0", ttft=0.5, latency=1.2, out=8)  # TPOT 0.0875: median of (0.15, 0.0875)
    assert policy.load_of("w0") == PT
    route(policy, a + fresh(5), out=3)  # the prefix node counts it: hit 10 of 25 tokens
    assert policy.load_of("w0") == pytest.approx(0.6 * 2 * PT + 1 * 3 * (0.15 + 0.0875) / 2, rel=1e-12)


def test_pd_sends_explored_requests_to_the_best_hit_ratio_from_0_7():
    policy, _ = make(3)
    shared = fresh(20)
    route(policy, shared)  # w0
    report(policy, "w2", 0.69)
    assert route(policy, fresh(20))[1].branch == "explore"
    report(policy, "w1", 0.8)
    report(policy, "w2", 0.8)
    assert route(policy, fresh(20))[1].worker_id == "w1"  # the first of equals
    assert route(policy, fresh(20))[1].branch == "pd"
    _, d = route(policy, shared + fresh(3))
    assert (d.worker_id, d.branch) == ("w0", "exploit")  # exploits ignore hit ratios
    off, _ = make(3, pd_balance=False)
    report(off, "w2", 0.9)
    assert route(off, fresh(20))[1].branch == "explore"


def _two_holders(fixed: bool, w2_done: bool):
    """P allocated to w1 and w2 (and A running on w0); then P + 5 tokens exploits."""
    policy, _ = make(3, subset_index_as_replica=not fixed)
    a, p = fresh(10), fresh(10)
    assert route(policy, a, out=7)[1].worker_id == "w0"
    assert route(policy, p, out=7)[1].worker_id == "w1"
    rid, d = route(policy, p, out=7)
    assert d.worker_id == "w2"
    if w2_done:
        finish(policy, rid, "w2", ok=False)
    return route(policy, p + fresh(5))[1]


@pytest.mark.parametrize("fixed, w2_done, worker", [
    (False, False, "w0"),  # w1 and w2 tie: position 0 of the pair is taken as GPU 0, which is not a holder
    (True, False, "w1"),
    (False, True, "w1"),  # w2 is cheaper (position 1): GPU 1, the dearer holder
    (True, True, "w2"),
])
def test_a_position_among_the_holders_is_used_as_the_replica_id(fixed, w2_done, worker):
    d = _two_holders(fixed, w2_done)
    assert (d.branch, set(d.costs), d.worker_id) == ("exploit", {"w1", "w2"}, worker)
    assert (d.costs["w1"] > d.costs["w2"]) == w2_done


def test_the_window_lags_a_decision_then_resets_the_allocation():
    policy, clock = make(3)
    a = fresh(10)
    rid, _ = route(policy, a)
    finish(policy, rid, "w0", ok=False)
    report(policy, "w1", 0.9)
    clock.t = 180.0  # not older than the window yet
    route(policy, fresh(10))
    assert policy.load_of("w0") == PT
    clock.t = 180.5
    _, d = route(policy, fresh(10))
    assert d.worker_id == "w1" and policy.load_of("w0") == 0.0  # expired once this request was recorded
    _, d = route(policy, a + fresh(2))  # a's allocation was reset: every GPU that ever got a request
    assert (d.branch, set(d.costs)) == ("exploit", {"w0", "w1"})


def test_the_virtual_lru_pops_prefixes_before_their_children_and_recounts_a_parent():
    """Idle nodes in touch order C2, U, C1, X (a walk touches a parent before its child). Freeing
    135 tokens pops C2, U, C1, and U again (pushed once both its children were visited): 140
    tokens, so X, which a plain LRU would take next, is not priced; U is priced at nothing
    (no window entry and nothing running through it)."""
    policy, _ = make(1)
    u, c1, c2 = fresh(30), fresh(40), fresh(40)
    r1, _ = route(policy, u + c1)
    r2, _ = route(policy, u + c2)
    finish(policy, r2, "w0", ok=False)
    finish(policy, r1, "w0", ok=False)
    r3, _ = route(policy, fresh(20))
    finish(policy, r3, "w0", ok=False)
    _, d = route(policy, fresh(135))
    first, second, x = 1.0 * 1 * PT, (1 - 30 / 70) * 1 * PT, 1.0 * 1 * PT
    load = math.fsum([first, second, x])
    assert d.costs["w0"] == load + 0.15 * 0 + math.fsum([first, second, 0.0])
    assert d.costs["w0"] != load + math.fsum([first, second, x])


@pytest.mark.parametrize("capacity, running, held", [(100, False, 0), (120, False, 60), (100, True, 60)])
def test_a_gpu_over_capacity_drops_its_idle_nodes(capacity, running, held):
    policy, _ = make(1, capacity_tokens=capacity)
    a = fresh(60)
    rid, _ = route(policy, a)
    if not running:
        finish(policy, rid, "w0")
    route(policy, fresh(60))
    assert route(policy, a)[1].matched_tokens == held


def test_the_default_capacity_is_198516_tokens():
    policy, _ = make(1)
    big = fresh(198_516)
    rid, _ = route(policy, big)
    finish(policy, rid, "w0")
    rid, _ = route(policy, fresh(1))
    finish(policy, rid, "w0")
    assert route(policy, big)[1].matched_tokens == 0
    policy, _ = make(1, capacity_tokens=198_517)
    rid, _ = route(policy, big)
    finish(policy, rid, "w0")
    route(policy, fresh(1))
    assert route(policy, big)[1].matched_tokens == 198_516


@pytest.mark.parametrize("ratio, moved", [(3.0, True), (3.01, False)])
def test_rebalancing_moves_the_cheapest_node_at_the_ratio_and_at_exact_balance(ratio, moved):
    """w0: P, R, S with 2 requests each (0.25 s each), w1: Q (0.25 s). Heaviest 0.75 against
    3x the lightest: at ratio 3 it steals, and moving 0.25 leaves both at 0.5 (equal is allowed)."""
    policy, _ = make(2, prefill=FLAT, high_load_ratio=ratio, rebalance_after_per_gpu=4)
    p, r, s, q = fresh(16), fresh(16), fresh(16), fresh(16)
    report(policy, "w0", 0.9)
    for prompt in (p, p, r, r, s, s):
        assert route(policy, prompt)[1].worker_id == "w0"
    report(policy, "w0", 0.0)
    report(policy, "w1", 0.9)
    for prompt in (q, q):  # the second is the 8th request: rebalancing may start
        assert route(policy, prompt)[1].worker_id == "w1"
    assert route(policy, p + fresh(4))[1].worker_id == ("w1" if moved else "w0")


@pytest.mark.parametrize("routes, worker", [(98, "w0"), (100, "w1")])
def test_no_rebalancing_before_50_requests_per_gpu(routes, worker):
    """Requests routed to the workers still there count: w2 took 10, then left."""
    policy, _ = make(3, prefill=FLAT)
    report(policy, "w2", 0.9)
    for _ in range(10):
        assert route(policy, fresh(16))[1].worker_id == "w2"
    policy.remove_worker("w2")
    p, r = fresh(16), fresh(16)
    report(policy, "w0", 0.9)
    for i in range(routes):
        assert route(policy, (p, r)[i % 2])[1].worker_id == "w0"
    assert route(policy, p + fresh(4))[1].worker_id == worker


@pytest.mark.parametrize("chain, worker", [(3, "w0"), (4, "w1")])
def test_rebalancing_skips_prompts_three_nodes_below_their_important_node(chain, worker):
    policy, _ = make(2, prefill=FLAT, chain_length=chain, rebalance_after_per_gpu=3)
    r, p, a, b, c = fresh(16), fresh(16), fresh(4), fresh(4), fresh(4)
    report(policy, "w0", 0.9)
    for prompt in (r, r, p, p + a, p + a + b, p + a + b + c):  # the 6th: leaf 3 below p
        assert route(policy, prompt)[1].worker_id == "w0"
    assert route(policy, p + fresh(4))[1].worker_id == worker


@pytest.mark.parametrize("late_ttft, shared", [(2.0, True), (1.99, False)])
def test_a_lone_candidate_is_shared_when_its_ttft_doubled_across_the_window(late_ttft, shared):
    policy, clock = make(2, prefill=FLAT, rebalance_after_per_gpu=1)
    p = fresh(16)
    report(policy, "w0", 0.9)
    r1, _ = route(policy, p)
    r2, _ = route(policy, p)
    clock.t = 5.0
    finish(policy, r1, "w0", ttft=1.0)
    clock.t = 100.0  # the halves split at 10 s
    finish(policy, r2, "w0", ttft=late_ttft)
    route(policy, p)  # rebalancing: P is w0's only candidate
    _, d = route(policy, p + fresh(4))
    assert set(d.costs) == ({"w0", "w1"} if shared else set())


def test_the_tree_stays_bounded_where_theirs_keeps_every_prompt():
    policy, clock = make(2, capacity_tokens=200, window_s=10.0)
    for _ in range(500):
        clock.t += 1.0
        rid, d = route(policy, fresh(50))
        finish(policy, rid, d.worker_id)
    assert count_nodes(policy) <= 1 + 2 * 200 // 50 + 11  # held by a GPU or named by the window


def test_a_removed_worker_gets_nothing_and_its_requests_are_forgotten():
    policy, _ = make(3)
    p = fresh(20)
    rids = [route(policy, p)[0]]
    rids.append(route(policy, p)[0])  # w1 (w0 is loaded)
    policy.remove_worker("w1")
    for rid, w in zip(rids, ("w0", "w1")):
        finish(policy, rid, w)
    seen = {route(policy, p + fresh(3))[1].worker_id for _ in range(5)}
    seen |= {route(policy, fresh(30))[1].worker_id for _ in range(5)}
    assert seen <= {"w0", "w2"} and policy.load_of("w1") == 0.0


def test_a_prompt_ending_at_a_known_node_does_not_refresh_its_recency():
    """A then B (twice) finish; A again ends exactly at its node, which their insert does not
    touch: the virtual LRU still takes A (1 request), not B (2), for A's 20 tokens."""
    policy, _ = make(1)
    a, b = fresh(20), fresh(20)
    for prompt in (a, b, b):
        rid, _ = route(policy, prompt)
        finish(policy, rid, "w0", ok=False)
    _, d = route(policy, a)
    assert d.costs["w0"] == math.fsum([PT, 2 * PT]) + 1.0 * 1 * PT


@pytest.mark.parametrize("share_before", [True, False])
def test_a_shared_node_counts_half_on_the_lightest_before_the_next_gpu(share_before):
    """w0: P (9 requests, its only candidate, TTFT doubled); w1: X (2) and Y (7); w2 idle. w0
    shares P with w2, whose load becomes half of P's: 0.5625 s. w1 (1.125 s) is then still 1.5x
    above it and hands it X (0.25 s). Without the doubling nothing is shared, and w1 against an
    idle w2 moves X all the same; with P counted whole (1.125 s) w1 would keep X."""
    policy, clock = make(3, prefill=FLAT, rebalance_after_per_gpu=6)
    p, x, y = fresh(16), fresh(16), fresh(16)
    report(policy, "w0", 0.9)
    first, last = route(policy, p)[0], route(policy, p)[0]
    for _ in range(7):
        route(policy, p)
    report(policy, "w0", 0.0)
    report(policy, "w1", 0.9)
    for prompt in [x, x] + [y] * 6:
        assert route(policy, prompt)[1].worker_id == "w1"
    clock.t = 5.0
    finish(policy, first, "w0", ttft=1.0)
    clock.t = 100.0
    finish(policy, last, "w0", ttft=2.0 if share_before else 1.0)
    assert route(policy, y)[1].worker_id == "w1"  # the 18th request: rebalancing starts
    assert route(policy, x + fresh(4))[1].worker_id == "w2"
    assert set(route(policy, p + fresh(4))[1].costs) == ({"w0", "w2"} if share_before else set())
