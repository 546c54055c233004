"""E2 in scripted scenarios, each checked against costs and loads recomputed by brute force."""

from __future__ import annotations

import itertools
import random

import pytest

from preble.core.cost_model import CostModel
from preble.core.kv_events import ROOT_HASH, CacheCleared, PagesRemoved, PagesStored, chain_hashes
from preble.core.messages import LoadReport
from preble.core.routing import make_policy
from preble.core.routing.base import RequestDone, RouteRequest
from preble.core.routing.e2 import E2Config, E2Policy

from .clocks import ManualClock

PS = 4
COST = CostModel()
NO_REBALANCE = dict(rebalance_min_load_s=1e18)



_ids = itertools.count()
_rng = random.Random(7)


def fresh(n: int) -> list[int]:
    """Tokens no other test sequence shares."""
    return [_rng.randrange(1_000, 1 << 30) for _ in range(n)]


def make(workers=("w0", "w1", "w2"), **cfg) -> tuple[E2Policy, ManualClock]:
    clock = ManualClock()
    policy = E2Policy(clock, COST, E2Config(page_size=PS, **cfg))
    for w in workers:
        policy.add_worker(w)
    return policy, clock


def hold(policy: E2Policy, worker: str, tokens: list[int]) -> None:
    """The worker reports (by KV event) that it caches these tokens."""
    policy.on_kv_event(worker, PagesStored(ROOT_HASH, chain_hashes(tokens, PS), tokens))


def report(policy: E2Policy, worker: str, *, tpot=0.05, total=10_000, used=0, evictable=0,
           hit_ratio=0.0) -> None:
    policy.on_load(LoadReport(worker, 0.0, 0, 0, 0, used, evictable, total, PS, hit_ratio, tpot, 0))


def route(policy: E2Policy, tokens: list[int], max_tokens: int = 10):
    return policy.route(RouteRequest(f"r{next(_ids)}", tokens, max_tokens))


def done(policy: E2Policy, rid: str, worker: str, prompt: int, cached: int, ttft: float, out=10):
    policy.on_done(RequestDone(rid, worker, prompt, cached, out, ttft, ttft + 1.0))


# ---------------------------------------------------------------------------- exploit / explore


@pytest.mark.parametrize("missing, branch", [(9, "explore"), (8, "explore"), (7, "exploit")])
def test_exploit_explore_boundary(missing, branch):
    """cached = 8 tokens; exploit only when cached > missing."""
    policy, _ = make(**NO_REBALANCE)
    prefix = fresh(8)
    hold(policy, "w1", prefix)
    for w in ("w0", "w2"):  # make w1 the most loaded, so explore would not favour it for free
        report(policy, w, tpot=0.01)
    report(policy, "w1", tpot=0.01)
    route(policy, fresh(40), max_tokens=500)  # some load for whoever takes it
    d = route(policy, prefix + fresh(missing))
    assert d.branch == branch
    if branch == "exploit":
        assert d.worker_id == "w1" and d.matched_tokens == 8 and set(d.costs) == {"w1"}
    else:
        assert set(d.costs) == {"w0", "w1", "w2"}


def test_returns_the_worker_id_when_only_a_subset_holds_the_prefix():
    policy, _ = make(**NO_REBALANCE)
    prefix = fresh(64)
    hold(policy, "w2", prefix)
    d = route(policy, prefix + fresh(3))
    assert (d.worker_id, d.branch, d.matched_tokens) == ("w2", "exploit", 64)


def test_explore_picks_the_lowest_load_plus_eviction_plus_prefill():
    policy, clock = make(**NO_REBALANCE)
    workers = ("w0", "w1", "w2")
    for w in workers:
        report(policy, w)
    # Earlier, unrelated requests, still running: whoever they went to carries their prefill
    # and their outstanding decode (output tokens at an unloaded step at their mean context).
    prefill = dict.fromkeys(workers, 0.0)
    outstanding: dict[str, list[tuple[int, int]]] = {w: [] for w in workers}  # (prompt, output)
    routed: dict[str, list[tuple[int, float]]] = {w: [] for w in workers}  # (pages, prefill) in order
    for n, out in [(64, 300), (40, 50), (120, 10), (24, 700), (80, 80), (36, 200)]:
        clock.t += 1.0
        d = route(policy, fresh(n), max_tokens=out)
        prefill[d.worker_id] += COST.prefill_time(n - d.matched_tokens, d.matched_tokens)
        outstanding[d.worker_id].append((n, out))
        routed[d.worker_id].append((n // PS, 1.0))
    load = {}
    for w, reqs in outstanding.items():
        step = COST.tpot(1, sum(n for n, _ in reqs) // len(reqs)) if reqs else 0.0
        load[w] = prefill[w] + step * sum(out for _, out in reqs)
    # Shared prefixes: w0 holds 20 tokens of the next prompt, w1 holds 12.
    prompt = fresh(48)
    hold(policy, "w0", prompt[:20])
    hold(policy, "w1", prompt[:12])
    held = {"w0": 20, "w1": 12, "w2": 0}
    # w2 is full: it must evict its least recently used nodes (the prompts routed to it, each
    # used once), which costs their recomputation.
    report(policy, "w2", total=1_000, used=1_000, evictable=900)
    out = 40
    expected = {}
    for w in workers:
        need = -(-(48 - held[w]) // PS) + -(-out // PS)
        m_cost = 0.0
        if w == "w2":
            for pages, hits in routed["w2"]:
                take = min(need, pages)
                m_cost += hits * COST.prefill_time(take * PS, (pages - take) * PS)
                need -= take
                if need == 0:
                    break
        expected[w] = load[w] + m_cost + COST.prefill_time(48 - held[w], held[w])
    d = route(policy, prompt, max_tokens=out)
    assert d.branch == "explore"
    assert d.costs == pytest.approx(expected, rel=1e-9)
    assert d.worker_id == min(expected, key=expected.get)
    assert routed["w2"], "the scenario needs requests on w2 for a non-zero M"


# ---------------------------------------------------------------------------- P/D balance


def test_decode_heavy_worker_takes_an_explored_request():
    policy, _ = make(**NO_REBALANCE)
    for w in ("w0", "w1"):
        report(policy, w, hit_ratio=0.2)
    report(policy, "w2", hit_ratio=0.7)
    first = route(policy, fresh(16), max_tokens=100)
    assert (first.worker_id, first.branch) == ("w2", "pd")
    d = route(policy, fresh(16), max_tokens=100)
    assert (d.worker_id, d.branch) == ("w2", "pd")
    assert d.costs["w2"] > min(d.costs.values())  # though it is now the most loaded


def test_decode_heavy_from_the_routers_own_record():
    policy, clock = make(workers=("w0", "w1"), pd_min_requests=3, **NO_REBALANCE)
    prefix = fresh(64)
    hold(policy, "w1", prefix)
    for _ in range(3):  # hits on w1: 64 of 68 prompt tokens cached
        clock.t += 1.0
        d = route(policy, prefix + fresh(4))
        assert d.worker_id == "w1"
        done(policy, f"r{next(_ids) - 1}", "w1", 68, 64, 0.1)
    route(policy, fresh(8))  # w1 is busier now: an explore would go to w0
    d = route(policy, fresh(32), max_tokens=10)
    assert (d.worker_id, d.branch) == ("w1", "pd")


# ---------------------------------------------------------------------------- rebalance


@pytest.mark.parametrize("ratio", [1.6, 1.4])
def test_rebalance_moves_subtrees_above_the_threshold_only(ratio):
    policy, clock = make(workers=("w0", "w1"), rebalance_min_load_s=1e-3, rebalance_interval_s=0.0)
    a, b, c = fresh(32), fresh(32), fresh(32)
    hold(policy, "w0", a)
    hold(policy, "w0", b)
    hold(policy, "w1", c)
    load = {"w0": 0.0, "w1": 0.0}
    step = COST.tpot(1, 36)  # every prompt is 36 tokens; none finishes
    subtree_b = 0.0

    def send(prefix, out, worker, branch="exploit"):
        nonlocal subtree_b
        clock.t += 1.0
        d = route(policy, prefix + fresh(4), max_tokens=out)
        assert (d.worker_id, d.branch) == (worker, branch)
        cost = COST.prefill_time(36 - d.matched_tokens, d.matched_tokens) + step * out
        load[worker] += cost
        if prefix is b:
            subtree_b += cost
        return d

    # w1 first gets two requests sized so that w0's load will be `ratio` times w1's; routing them
    # first keeps w1 from looking idle while B is still too small to move.
    p = COST.prefill_time(4, 32)
    w0_load = 4 * p + step * (2 * 100 + 2 * 20)
    per_c = round((w0_load / ratio - 2 * p) / 2 / step)
    send(c, per_c, "w1")
    send(c, per_c, "w1")
    for _ in range(2):
        send(a, 100, "w0")
        send(b, 20, "w0")
    assert load["w0"] / load["w1"] == pytest.approx(ratio, rel=0.01)
    if ratio > 1.5:  # B (the subtree that fits in half the gap) moves; then within 1.5x: stop
        assert subtree_b <= (load["w0"] - load["w1"]) / 2
        d = send(b, 20, "w1", "rebalance")
        assert d.matched_tokens == 0
        send(a, 100, "w0")  # A stays
    else:  # within 1.5x: nothing moves (one request: after it, w0 is past the threshold)
        send(b, 20, "w0")


@pytest.mark.parametrize("prefix_len, shifted", [(32, True), (4096, False)])
def test_rebalance_shifts_only_what_is_worth_its_recompute(prefix_len, shifted):
    """Two requests through one prefix load w0; w1 is idle. A short prefix gets w1 as a replica;
    a long one would cost w1 more to recompute than the load it takes off w0, so it stays."""
    policy, clock = make(workers=("w0", "w1"), rebalance_min_load_s=1e-3, rebalance_interval_s=0.0)
    prefix = fresh(prefix_len)
    hold(policy, "w0", prefix)
    for _ in range(2):
        clock.t += 1.0
        assert route(policy, prefix + fresh(4), max_tokens=10).worker_id == "w0"
    load = 2 * (COST.prefill_time(4, prefix_len) + 10 * COST.tpot(1, prefix_len + 4))
    assert (load / 2 >= COST.prefill_time(prefix_len)) == shifted  # a replica takes half
    clock.t += 1.0
    d = route(policy, prefix + fresh(4), max_tokens=10)
    assert (d.worker_id, d.branch) == (("w1", "replicate") if shifted else ("w0", "exploit"))


def test_rebalance_replicates_a_hot_prefix_too_large_to_move():
    """One prefix carries all of w0's load: no subtree fits in half the gap, so the prefix gets
    the lightest worker as a replica, then the next lightest, and its requests spread."""
    policy, clock = make(workers=("w0", "w1", "w2"), rebalance_min_load_s=1e-3,
                         rebalance_interval_s=0.0)
    for w in ("w0", "w1", "w2"):
        report(policy, w, tpot=0.1)
    prefix = fresh(64)
    hold(policy, "w0", prefix)
    seen = []
    for _ in range(12):
        clock.t += 0.1
        d = route(policy, prefix + fresh(4), max_tokens=50)
        seen.append((d.worker_id, d.branch))
    # A prefix moves once two requests used it; then w1 (lightest), then w2 join.
    assert seen[:4] == [("w0", "exploit")] * 2 + [("w1", "replicate"), ("w2", "replicate")]
    tail = [w for w, _ in seen[-6:]]
    assert all(b == "replicate" for _, b in seen[2:])
    assert sorted(tail) == ["w0", "w0", "w1", "w1", "w2", "w2"]  # the load evens out


# ---------------------------------------------------------------------------- replicate


@pytest.mark.parametrize("later_ttft, replicated", [(0.3, True), (0.15, False)])
def test_replicates_a_prefix_whose_ttft_doubles(later_ttft, replicated):
    policy, clock = make(workers=("w0", "w1"), replicate_min_samples=4, **NO_REBALANCE)
    prefix = fresh(64)
    hold(policy, "w0", prefix)
    # Window 180 s in 6 buckets: [0, 90) is the older half at t = 130, [90, 180) the newer.
    for t, ttft in [(10, 0.1), (20, 0.1), (35, 0.1), (45, 0.1),
                    (100, later_ttft), (110, later_ttft), (125, later_ttft), (130, later_ttft)]:
        clock.t = t
        d = route(policy, prefix + fresh(4))
        assert (d.worker_id, d.branch) == ("w0", "exploit")
        done(policy, f"r{next(_ids) - 1}", "w0", 68, 64, ttft)
    clock.t = 131
    d = route(policy, prefix + fresh(4))
    if replicated:
        assert d.branch == "replicate" and set(d.costs) == {"w0", "w1"}
        assert d.worker_id == min(d.costs, key=d.costs.get) == "w1"
    else:
        assert (d.worker_id, d.branch) == ("w0", "exploit")


# ---------------------------------------------------------------------------- tree and workers


def test_tree_stays_bounded_under_distinct_prompts():
    policy, clock = make(window_s=10.0, window_buckets=5, routed_ttl_s=5.0, **NO_REBALANCE)
    peak = 0
    for _ in range(3000):
        clock.t += 0.05  # 200 prompts per window
        d = route(policy, fresh(24), max_tokens=4)
        done(policy, f"r{next(_ids) - 1}", d.worker_id, 24, 0, 0.1, out=4)
        peak = max(peak, policy.tree.num_nodes)
    assert peak < 300


def test_pending_holding_keeps_a_burst_together():
    """Requests sharing a new prefix, routed before any KV event arrives, stay on one worker."""
    policy, _ = make(**NO_REBALANCE)
    for w in ("w0", "w1", "w2"):
        hold(policy, w, fresh(8))  # every worker sends events
    doc = fresh(200)
    first = route(policy, doc + fresh(4))
    assert first.branch == "explore"
    for _ in range(5):
        d = route(policy, doc + fresh(4))
        assert (d.worker_id, d.branch) == (first.worker_id, "exploit")


def test_worker_with_other_page_size_is_tracked_by_routed_prompts():
    policy, _ = make(**NO_REBALANCE)
    tokens = fresh(16)
    policy.on_kv_event("w1", PagesStored(ROOT_HASH, chain_hashes(tokens, 8), tokens))
    assert policy.tree.match(tokens).held == {}
    d = route(policy, tokens)
    assert policy.tree.match(tokens).held == {d.worker_id: 16}  # the prompt just routed there


def test_event_gap_falls_back_to_routed_tracking_until_resync():
    policy, _ = make(**NO_REBALANCE)
    a, b = fresh(16), fresh(16)
    hold(policy, "w0", a)
    orphan = chain_hashes(fresh(4) + b, PS)  # pages under a parent the router never saw
    policy.on_kv_event("w1", PagesStored(orphan[0], orphan[1:], b))
    hold(policy, "w1", b)  # ignored until a resync
    assert policy.tree.match(b).held == {}
    policy.on_resync("w1", [PagesStored(ROOT_HASH, chain_hashes(b, PS), b)])
    assert policy.tree.match(b).held == {"w1": 16}
    assert policy.tree.match(a).held == {"w0": 16}


def test_cache_cleared_ends_an_event_gap():
    """An engine that cannot send a resync (vLLM) starts its stream over with CacheCleared."""
    policy, _ = make(**NO_REBALANCE)
    a, b = fresh(16), fresh(16)
    hold(policy, "w1", a)
    policy.on_kv_event("w1", PagesRemoved(chain_hashes(fresh(4), PS)))  # pages never seen: a gap
    assert policy.worker_info("w1").kv_events == "gap"
    hold(policy, "w1", b)  # ignored
    assert policy.tree.match(a).held == {} and policy.tree.match(b).held == {}
    policy.on_kv_event("w1", CacheCleared())
    hold(policy, "w1", b)
    info = policy.worker_info("w1")
    assert (info.kv_events, info.kv_events_note) == ("live", None)
    assert policy.tree.match(b).held == {"w1": 16}


def test_routed_holdings_are_corrected_by_reported_cached_tokens():
    policy, clock = make(workers=("w0",), **NO_REBALANCE)  # w0 sends no KV events
    old, doc = fresh(40), fresh(40)
    route(policy, old)
    clock.t = 10.0
    first = route(policy, doc + fresh(4))
    clock.t = 20.0
    rid = f"r{next(_ids)}"
    d = policy.route(RouteRequest(rid, doc + fresh(4), 10))
    assert d.matched_tokens == 40
    done(policy, rid, "w0", 44, 0, 0.1)  # it had evicted doc, used at t=10: so `old` is gone too
    assert policy.tree.match(old).held == {}
    assert policy.tree.match(doc).held == {"w0": 40}  # the request just recomputed it
    assert first.worker_id == "w0"


def test_remove_worker_forgets_it():
    policy, _ = make(**NO_REBALANCE)
    prefix = fresh(32)
    hold(policy, "w1", prefix)
    policy.remove_worker("w1")
    hold(policy, "w1", prefix)  # a late event of the removed worker is dropped
    d = route(policy, prefix + fresh(2))
    assert d.worker_id in ("w0", "w2") and d.branch == "explore"


def test_make_policy_builds_e2_and_rejects_unknown_names():
    policy = make_policy("e2", clock=ManualClock(), page_size=PS, config=E2Config(page_size=PS))
    assert isinstance(policy, E2Policy) and policy.config.page_size == PS
    assert make_policy("e2", clock=ManualClock(), page_size=PS).config.page_size == PS  # defaults, the workers' size
    with pytest.raises(ValueError, match="page size 16 is not the workers' 4"):
        make_policy("e2", clock=ManualClock(), page_size=4, config=E2Config())
    with pytest.raises(ValueError, match="unknown routing policy 'nope'.*e2"):
        make_policy("nope", clock=ManualClock())
    with pytest.raises(ValueError):
        make_policy("round_robin", clock=ManualClock(), config=E2Config())
