"""SGLang's two routers as peer policies: the model gateway's cache_aware (smg) and the slim
router's cache-aware selection. Each is checked against a naive model over plain lists on random
scenarios, and each source rule at its exact threshold."""

from __future__ import annotations

import math
import random
from dataclasses import astuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preble.core.kv_events import ROOT_HASH, CacheCleared, PagesRemoved, PagesStored, chain_hashes
from preble.core.messages import LoadReport
from preble.core.routing.base import RequestDone, RouteRequest
from preble.core.routing.sglang_gateway import SGLangGateway, SGLangGatewayConfig
from preble.core.routing.sglang_slim import SGLangSlim, SGLangSlimConfig


def clock() -> float:
    return 0.0


def req(rid: str, tokens: list[int]) -> RouteRequest:
    return RouteRequest(rid, tokens, 8)


def done(policy, rid: str, worker: str) -> None:
    policy.on_done(RequestDone(rid, worker, 0, 0, 0, 0.1, 0.2))


def lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def doc(base: int, n: int) -> list[int]:
    return list(range(base, base + n))


# ============================================================================ model gateway

class NaiveGateway:
    """The gateway's rules over a plain list of every prompt routed to each worker."""

    def __init__(self, cfg: SGLangGatewayConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.prompts: dict[str, list[list[int]]] = {}
        self.load: dict[str, int] = {}
        self.processed: dict[str, int] = {}
        self.routed: dict[str, str] = {}

    def add(self, w: str) -> None:
        if w not in self.load:
            self.prompts[w], self.load[w], self.processed[w] = [], 0, 0

    def remove(self, w: str) -> None:
        if w in self.load:
            del self.prompts[w], self.load[w], self.processed[w]
            self.routed = {r: x for r, x in self.routed.items() if x != w}

    def done(self, rid: str) -> None:
        if rid in self.routed:
            self.load[self.routed.pop(rid)] -= 1

    def route(self, rid: str, tokens: list[int]) -> tuple[str, str, int]:
        cfg, order = self.cfg, list(self.load)
        whole = tokens[:len(tokens) - len(tokens) % cfg.block_size]
        best = {w: max((lcp(whole, p) for p in self.prompts[w]), default=0) for w in order}
        top = max(best.values())
        matched = top - top % cfg.block_size
        holders = [w for w in order if matched and best[w] >= matched]
        least = min(order, key=lambda w: (self.load[w], self.processed[w], order.index(w)))
        if tokens and matched / len(tokens) > cfg.cache_threshold:
            lowest = min(self.load[w] for w in holders)
            tied = [w for w in holders if self.load[w] == lowest]
            pick = tied[0] if len(tied) == 1 else self.rng.choice(tied)
            mean = sum(self.load.values()) / len(order)
            over = (self.load[pick] > mean * cfg.spill_rel_threshold and
                    self.load[pick] > mean + cfg.spill_abs_threshold)
            worker, branch = (least, "spill") if over else (pick, "cache_hit")
        else:
            worker, branch = least, "cache_miss"
        if whole:
            self.prompts[worker].append(whole)
        self.routed[rid] = worker
        self.load[worker] += 1
        self.processed[worker] += 1
        return worker, branch, matched if worker in holders else 0


GW_WORKERS = ("g0", "g1", "g2", "g3")
STEMS = (doc(1, 12), doc(1, 6) + doc(50, 6), doc(80, 10), [7, 7, 7, 7, 7, 7])
prompts = st.builds(lambda stem, cut, tail: stem[:cut] + tail, st.sampled_from(STEMS),
                    st.integers(0, 12), st.lists(st.integers(200, 203), max_size=6))
gw_ops = st.one_of(
    st.tuples(st.just("route"), prompts),
    st.tuples(st.just("done"), st.integers(0, 200)),
    st.tuples(st.just("remove"), st.sampled_from(GW_WORKERS)),
    st.tuples(st.just("add"), st.sampled_from(GW_WORKERS)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(gw_ops, min_size=10, max_size=60), block=st.sampled_from([1, 2, 3]),
       threshold=st.sampled_from([0.0, 0.3, 0.6]), spill=st.sampled_from([(1.2, 0), (1.5, 1), (2.0, 2)]),
       seed=st.integers(0, 3))
def test_gateway_matches_a_naive_model_of_its_rules(ops, block, threshold, spill, seed):
    cfg = SGLangGatewayConfig(cache_threshold=threshold, spill_rel_threshold=spill[0],
                              spill_abs_threshold=spill[1], block_size=block, max_tree_tokens=1 << 30,
                              seed=seed)
    policy, model = SGLangGateway(clock, cfg), NaiveGateway(cfg)
    for w in GW_WORKERS[:3]:
        policy.add_worker(w)
        model.add(w)
    rids: list[str] = []
    for i, (op, arg) in enumerate(ops):
        if op == "route" and model.load:
            d = policy.route(req(f"r{i}", arg))
            assert (d.worker_id, d.branch, d.matched_tokens) == model.route(f"r{i}", arg)
            rids.append(f"r{i}")
        elif op == "done" and rids:
            rid = rids[arg % len(rids)]
            done(policy, rid, "")
            model.done(rid)
        elif op == "remove" and len(model.load) > 1:
            policy.remove_worker(arg)
            model.remove(arg)
        elif op == "add":
            policy.add_worker(arg)
            model.add(arg)
        assert policy.load == model.load


def gateway(n_workers: int, **kw) -> SGLangGateway:
    policy = SGLangGateway(clock, SGLangGatewayConfig(**kw))
    for i in range(n_workers):
        policy.add_worker(f"w{i}")
    return policy


def test_gateway_defaults_are_smg_cli_defaults():
    assert astuple(SGLangGatewayConfig()) == (0.3, 1.5, 64, 16, 67108864, 8, 0)


def test_gateway_hit_needs_a_match_rate_above_the_threshold_over_whole_pages():
    g = gateway(2)
    base = doc(1000, 48)  # three 16-token pages
    assert g.route(req("seed", base)).worker_id == "w0"  # empty tree: least loaded, first added
    # 48 of 160 tokens is exactly 0.3: not above it, a miss to the least loaded worker (w1).
    d = g.route(req("at", base + doc(1, 112)))
    assert (d.worker_id, d.branch, d.matched_tokens) == ("w1", "cache_miss", 0)
    done(g, "at", "w1")
    # A different 48-token tail matches only the stem: 48 / 159 > 0.3 and both hold it. The
    # lighter holder wins (w0 carries "seed").
    d = g.route(req("above", base + doc(5000, 111)))
    assert (d.worker_id, d.branch, d.matched_tokens) == ("w1", "cache_hit", 48)
    # Only whole pages count: 20 tokens of the stem match one page, 16 / 20 > 0.3.
    d = g.route(req("partial", base[:20]))
    assert (d.branch, d.matched_tokens) == ("cache_hit", 16)
    # A prompt shorter than a page is neither matched nor recorded.
    short = doc(9000, 15)
    g.route(req("s1", short))
    assert g.route(req("s2", short)).branch == "cache_miss"
    assert g.match(short) == (0, ())


def test_gateway_spill_needs_both_margins_over_the_fleet_mean():
    # Four workers, one holder: its load L spills once L > 1.5 * L/4 (always) and L > L/4 + 64,
    # i.e. from L = 86: the absolute margin decides.
    g = gateway(4)
    base = doc(1, 64)
    g.route(req("seed", base))
    for i in range(1, 86):
        d = g.route(req(f"h{i}", base + [i]))
        assert (d.worker_id, d.branch) == ("w0", "cache_hit")
    d = g.route(req("spill", base + [0]))
    assert (d.worker_id, d.branch, d.matched_tokens) == ("w1", "spill", 0)
    # The spill made w1 a second holder; it is now the least loaded holder of the prefix.
    d = g.route(req("after", base + [1, 2]))
    assert (d.worker_id, d.branch, d.matched_tokens) == ("w1", "cache_hit", 64)

    # Two workers, w1 at load 100: w0 spills once L > 0.75 (L + 100) (L > 300) and
    # L - 100 > 128 (L > 228): the relative margin decides.
    g = gateway(2)
    other = doc(5000, 64)
    g.route(req("seed", base))
    for i in range(100):
        assert g.route(req(f"o{i}", other + [i])).worker_id == "w1"
    for load in range(1, 301):
        assert g.route(req(f"b{load}", base + [load])).branch == "cache_hit"
    d = g.route(req("spill", base))
    assert (d.worker_id, d.branch) == ("w1", "spill")


def test_gateway_miss_ties_go_to_fewer_routed_then_first_added():
    g = gateway(3)
    picks = []
    for i in range(5):  # every prompt unseen; each finishes before the next arrives
        picks.append(g.route(req(f"r{i}", doc(100 * i, 40))).worker_id)
        done(g, f"r{i}", picks[-1])
    assert picks == ["w0", "w1", "w2", "w0", "w1"]
    assert g.load == {"w0": 0, "w1": 0, "w2": 0}


def test_gateway_picks_among_equally_loaded_holders_by_a_seeded_draw():
    def picks(seed: int) -> list[str]:
        g = gateway(3, seed=seed, cache_threshold=0.9)
        base = doc(1, 32)
        for i in range(3):  # long tails keep these misses: every worker records the stem
            g.route(req(f"m{i}", base + doc(1000 * (i + 1), 400)))
        out = []
        for i in range(12):  # all three hold the stem at load 1 until the pick finishes
            out.append(g.route(req(f"h{i}", base)).worker_id)
            done(g, f"h{i}", out[-1])
        return out

    assert picks(5) == picks(5)
    assert set(picks(5)) | set(picks(6)) == {"w0", "w1", "w2"}


def test_gateway_considers_only_the_first_eight_holders():
    def winners(cap: int) -> set[str]:
        g = gateway(10, holders_cap=cap, cache_threshold=0.9)
        base = doc(1, 32)
        for i in range(10):  # ten misses: w0..w9 record the stem, oldest first
            g.route(req(f"m{i}", base + doc(1000 * (i + 1), 400)))
        done(g, "m9", "w9")  # w9 is now the least loaded holder
        out = set()
        for i in range(16):
            out.add(g.route(req(f"h{i}", base)).worker_id)
            done(g, f"h{i}", "")
        return out

    assert winners(8) <= {f"w{i}" for i in range(8)}
    assert winners(10) == {"w9"}


def test_gateway_tree_budget_is_shared_and_removal_forgets_a_worker():
    g = gateway(2, max_tree_tokens=100, block_size=1)
    rng = random.Random(0)
    for i in range(60):
        d = g.route(req(f"r{i}", [rng.randrange(1 << 20) for _ in range(30)]))
        done(g, f"r{i}", d.worker_id)
        assert max(g.tree.sizes.values()) <= 50
    base = doc(1, 30)
    holder = g.route(req("x", base)).worker_id
    g.remove_worker(holder)
    assert g.tree.max_tokens == 100
    assert g.match(base) == (0, ())


# ============================================================================ slim router

def report(w: str, waiting_tokens: int, waiting: int = 0, running: int = 0) -> LoadReport:
    return LoadReport(w, 0.0, running, waiting, waiting_tokens, 0, 0, 100, 16, 0.0, 0.0, 0)


class NaiveSlim:
    """The slim router's rules over each worker's cached page-aligned prefixes as a plain set."""

    def __init__(self, cfg: SGLangSlimConfig, workers: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.workers = list(workers)
        self.caches: dict[str, set[tuple[int, ...]]] = {w: set() for w in workers}
        self.active = {w: 0 for w in workers}
        self.reports: dict[str, LoadReport] = {}
        self.routed: dict[str, str] = {}

    def held(self, w: str, tokens: list[int]) -> int:
        return max((len(p) for p in self.caches[w] if tuple(tokens[:len(p)]) == p), default=0)

    def pressure(self, w: str, group: list[str]) -> tuple[int, ...]:
        if all(x in self.reports for x in group):
            r = self.reports[w]
            return (r.waiting_tokens, r.waiting, r.running, self.active[w])
        return (self.active[w],)

    def route(self, rid: str, tokens: list[int]) -> tuple[str, str, int]:
        cfg, n = self.cfg, len(tokens)
        pages = math.ceil(n / cfg.page_size)
        matched = {}
        for w in self.workers:
            k = self.held(w, tokens) // cfg.page_size
            if k:
                matched[w] = n * k // pages
        passed = [w for w in self.workers if w in matched and matched[w] >= cfg.min_matched_tokens and
                  (cfg.min_match_ratio is None or matched[w] / n >= cfg.min_match_ratio)]
        limit = min(len(self.workers), cfg.candidate_max_workers,
                    max(cfg.candidate_min_workers, math.ceil(cfg.candidate_ratio * len(self.workers))))
        ranked = sorted(passed, key=lambda w: (-matched[w], self.pressure(w, passed), w))[:limit]
        if ranked:
            worker, branch = self.tournament(ranked, matched, n), "cache_candidate"
        else:
            worker, branch = self.power_of_two(), "power_of_two"
        self.routed[rid] = worker
        self.active[worker] += 1
        return worker, branch, matched.get(worker, 0)

    def tournament(self, ranked: list[str], matched: dict[str, int], n: int) -> str:
        cfg = self.cfg
        work = {w: n - matched[w] for w in ranked}
        guard = cfg.pressure_guard and all(w in self.reports for w in ranked)

        def heavier(a: str, b: str) -> bool:
            wa, wb = self.reports[a].waiting_tokens, self.reports[b].waiting_tokens
            return wa - wb > cfg.pressure_abs_tokens and wa > wb * cfg.pressure_rel

        winner = next(w for w in ranked if work[w] == min(work.values()))
        ceiling = work[winner] + cfg.switch_margin_tokens
        for w in ranked:
            if w == winner or work[w] > ceiling:
                continue
            if guard and heavier(winner, w):
                winner = w
            elif guard and heavier(w, winner):
                pass
            elif (work[w], self.pressure(w, ranked), w) < (work[winner], self.pressure(winner, ranked), winner):
                winner = w
        return winner

    def power_of_two(self) -> str:
        if len(self.workers) == 1:
            return self.workers[0]
        i = self.rng.randrange(len(self.workers))
        j = self.rng.randrange(len(self.workers) - 1)
        a, b = self.workers[i], self.workers[j + (j >= i)]
        return b if self.pressure(a, [a, b]) > self.pressure(b, [a, b]) else a


SLIM_WORKERS = ("s0", "s1", "s2", "s3")
slim_ops = st.one_of(
    st.tuples(st.just("store"), st.sampled_from(SLIM_WORKERS), prompts),
    st.tuples(st.just("evict"), st.sampled_from(SLIM_WORKERS), st.integers(0, 20)),
    st.tuples(st.just("clear"), st.sampled_from(SLIM_WORKERS), st.none()),
    st.tuples(st.just("report"), st.sampled_from(SLIM_WORKERS),
              st.tuples(st.integers(0, 12), st.integers(0, 2), st.integers(0, 2))),
    st.tuples(st.just("route"), st.none(), prompts),
    st.tuples(st.just("done"), st.none(), st.integers(0, 200)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(slim_ops, min_size=10, max_size=60), page=st.sampled_from([1, 2, 3]),
       gate=st.sampled_from([(1, None), (4, None), (2, 0.5)]), margin=st.sampled_from([0, 3, 8]),
       guard=st.booleans(), bound=st.sampled_from([(1, 0.0, 4), (2, 0.5, 3), (8, 0.05, 32)]),
       seed=st.integers(0, 3))
def test_slim_matches_a_naive_model_of_its_rules(ops, page, gate, margin, guard, bound, seed):
    cfg = SGLangSlimConfig(page_size=page, min_matched_tokens=gate[0], min_match_ratio=gate[1],
                           candidate_min_workers=bound[0], candidate_ratio=bound[1],
                           candidate_max_workers=bound[2], switch_margin_tokens=margin,
                           pressure_guard=guard, pressure_abs_tokens=2, pressure_rel=1.5, seed=seed)
    policy, model = SGLangSlim(clock, cfg), NaiveSlim(cfg, SLIM_WORKERS)
    for w in SLIM_WORKERS:
        policy.add_worker(w)
    rids: list[str] = []
    for i, (op, w, arg) in enumerate(ops):
        if op == "store":
            whole = arg[:len(arg) - len(arg) % page]
            if whole:
                policy.on_kv_event(w, PagesStored(ROOT_HASH, chain_hashes(whole, page), whole))
                model.caches[w].update(tuple(whole[:k]) for k in range(page, len(whole) + 1, page))
        elif op == "evict":
            cache = model.caches[w]
            leaves = sorted(p for p in cache if not any(len(q) > len(p) and q[:len(p)] == p for q in cache))
            if leaves:
                leaf = leaves[arg % len(leaves)]
                policy.on_kv_event(w, PagesRemoved([chain_hashes(list(leaf), page)[-1]]))
                cache.discard(leaf)
        elif op == "clear":
            policy.on_kv_event(w, CacheCleared())
            model.caches[w].clear()
        elif op == "report":
            policy.on_load(report(w, *arg))
            model.reports[w] = report(w, *arg)
        elif op == "route":
            d = policy.route(req(f"r{i}", arg))
            assert (d.worker_id, d.branch, d.matched_tokens) == model.route(f"r{i}", arg)
            rids.append(f"r{i}")
        elif op == "done" and rids:
            rid = rids[arg % len(rids)]
            done(policy, rid, "")
            if rid in model.routed:
                model.active[model.routed.pop(rid)] -= 1
        assert policy.active == model.active


def slim(n_workers: int, **kw) -> SGLangSlim:
    policy = SGLangSlim(clock, SGLangSlimConfig(**kw))
    for i in range(n_workers):
        policy.add_worker(f"w{i}")
    return policy


def cache(policy: SGLangSlim, worker: str, tokens: list[int]) -> None:
    ps = policy.config.page_size
    whole = tokens[:len(tokens) - len(tokens) % ps]
    policy.on_kv_event(worker, PagesStored(ROOT_HASH, chain_hashes(whole, ps), whole))


def test_slim_defaults_are_the_routers_affinity_defaults():
    assert astuple(SGLangSlimConfig()) == (16, 1024, None, 8, 0.05, 32, 1024, True, 1024, 1.5, 0, 64)


def test_slim_gate_counts_matched_tokens_as_the_routers_block_share_estimate():
    s = slim(2)
    prompt = doc(1, 1024)
    cache(s, "w1", prompt[:1008])  # 63 of 64 pages: 1,008 estimated tokens, under 1,024
    assert s.route(req("a", prompt)).branch == "power_of_two"
    cache(s, "w1", prompt)  # all 64 pages: 1,024
    d = s.route(req("b", prompt))
    assert (d.worker_id, d.branch, d.matched_tokens) == ("w1", "cache_candidate", 1024)
    # The partial last page counts in the denominator: 64 of ceil(1030 / 16) = 65 pages of a
    # 1,030-token prompt estimate 1,030 * 64 // 65 = 1,014 tokens, under the gate.
    assert s.route(req("c", prompt + doc(5000, 6))).branch == "power_of_two"
    assert s.matched_tokens(prompt + doc(5000, 6)) == {"w1": 1014}


def test_slim_least_uncached_wins_and_the_guard_needs_both_margins():
    prompt = doc(1, 4096)

    def pick(a: int | None, b: int | None, c: int | None = 0) -> str:
        s = slim(3)
        cache(s, "w0", prompt)  # uncached 0
        cache(s, "w1", prompt[:3072])  # uncached 1,024: a near tie (at the margin)
        cache(s, "w2", prompt[:2048])  # uncached 2,048: outside the margin
        for w, waiting in (("w0", a), ("w1", b), ("w2", c)):
            if waiting is not None:
                s.on_load(report(w, waiting))
        return s.route(req("r", prompt)).worker_id

    assert pick(None, None, None) == "w0"  # no samples: no guard, least uncached work
    assert pick(2000, 900) == "w1"  # 1,100 more waiting tokens and over 1.5x: w0 yields
    assert pick(1924, 900) == "w0"  # exactly 1,024 more: not above the absolute margin
    assert pick(3075, 2050) == "w0"  # exactly 1.5x: not above the relative margin
    assert pick(3076, 2050) == "w1"
    assert pick(2000, 900, None) == "w0"  # a candidate without a sample turns the guard off
    assert pick(9000, 8000, 0) == "w0"  # w2 is outside the margin: the guard never reaches it
    # One token more uncached work than the margin allows: w1 is out of the window too.
    s = slim(2)
    cache(s, "w0", prompt)
    cache(s, "w1", prompt[:3056])
    s.on_load(report("w0", 9000))
    s.on_load(report("w1", 0))
    assert s.route(req("r", prompt)).worker_id == "w0"


def test_slim_near_ties_go_to_lower_pressure_then_id():
    prompt = doc(1, 2048)
    s = slim(3)
    for w in ("w2", "w1", "w0"):
        cache(s, w, prompt)
    assert s.route(req("a", prompt)).worker_id == "w0"  # equal work and load: the lowest id
    assert s.route(req("b", prompt)).worker_id == "w1"  # w0 has one in flight now
    for w, waiting in (("w0", 10), ("w1", 10), ("w2", 5)):
        s.on_load(report(w, waiting))
    assert s.route(req("c", prompt)).worker_id == "w2"  # fewer waiting tokens, not "materially"
    # Sampled pressure orders waiting tokens, then waiting requests, then running requests.
    for w, sample in (("w0", (5, 1, 3)), ("w1", (5, 1, 2)), ("w2", (5, 2, 0))):
        s.on_load(report(w, *sample))
    assert s.route(req("d", prompt)).worker_id == "w1"


def test_slim_ranks_candidates_by_pressure_before_cutting_them():
    prompt = doc(1, 2048)
    s = slim(2, candidate_min_workers=1, candidate_ratio=0.0)  # one candidate kept
    for w in ("w0", "w1"):
        cache(s, w, prompt)
    assert s.route(req("a", prompt)).worker_id == "w0"
    # Equal matches: the one kept is the less pressured (w1; w0 has "a" in flight), not the
    # lower id.
    assert s.route(req("b", prompt)).worker_id == "w1"


def test_slim_keeps_only_the_bounded_candidates():
    prompt = doc(1, 2048)

    def pick(min_workers: int) -> str:
        s = slim(9, candidate_min_workers=min_workers)  # min(9, 32, max(k, ceil(0.45)))
        for i in range(8):
            cache(s, f"w{i}", prompt)
            s.on_load(report(f"w{i}", 5000))
        cache(s, "w8", prompt[:2032])  # one page less: ranked last
        s.on_load(report("w8", 0))
        return s.route(req("r", prompt)).worker_id

    assert pick(8) == "w0"  # w8 is cut before the guard could prefer it
    assert pick(9) == "w8"


def test_slim_miss_is_a_seeded_power_of_two_by_pressure():
    s = slim(2)
    s.on_load(report("w0", 50))
    s.on_load(report("w1", 10))
    assert {s.route(req(f"r{i}", doc(1, 100))).worker_id for i in range(8)} == {"w1"}
    runs = []
    for _ in range(2):
        s = slim(6, seed=7)
        runs.append([s.route(req(f"r{i}", doc(i, 10))).worker_id for i in range(30)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 3


def test_slim_follows_kv_events_and_forgets_removed_workers():
    s = slim(2)
    prompt = doc(1, 2048)
    cache(s, "w1", prompt)
    assert s.route(req("a", prompt)).worker_id == "w1"
    assert s.active == {"w0": 0, "w1": 1}
    done(s, "a", "w1")
    assert s.active == {"w0": 0, "w1": 0}
    s.on_kv_event("w1", PagesRemoved(chain_hashes(prompt, 16)[-8:]))  # the deepest 128 tokens
    assert s.matched_tokens(prompt) == {"w1": 1920}
    s.on_kv_event("w1", PagesStored(12345, chain_hashes(doc(9, 16), 16), doc(9, 16)))  # unknown parent
    s.on_kv_event("w1", CacheCleared())
    assert s.matched_tokens(prompt) == {}
    cache(s, "w0", prompt)
    s.remove_worker("w0")
    assert s.matched_tokens(prompt) == {}
    assert s.route(req("b", prompt)).worker_id == "w1"
