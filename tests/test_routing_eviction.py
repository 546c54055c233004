"""The eviction term: what a request's pages evict from a full cache, priced by hand, and what the
default policy does with it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preble.core.cost_model import CostModel
from preble.core.kv_events import ROOT_HASH, PagesStored, chain_hashes
from preble.core.messages import LoadReport
from preble.core.routing.base import RouteRequest
from preble.core.routing.eviction import VictimCurve
from preble.core.routing.latency import LatencyConfig, LatencyPolicy

from .clocks import ManualClock

PS = 4
COST = CostModel(a=0.01, b=0.001, c=0.0, d=0.005, e=0.001, f=0.0001)
HOT, COLD = list(range(1000, 1032)), list(range(2000, 2032))  # 8 pages each


def make(eviction: bool = True, workers=("w0", "w1")) -> tuple[LatencyPolicy, ManualClock]:
    clock = ManualClock()
    policy = LatencyPolicy(clock, COST, LatencyConfig(page_size=PS, step_tokens=64, eviction=eviction,
                                                      copy_credit=False))
    for w in workers:
        policy.add_worker(w)
    return policy, clock


def store(policy: LatencyPolicy, worker: str, prompt: list[int], requests: int) -> None:
    """The worker holds `prompt` (by its KV event) and served `requests` requests through it."""
    policy.on_kv_event(worker, PagesStored(ROOT_HASH, chain_hashes(prompt, PS), prompt))
    node = policy.tree.match(prompt).path[-1]
    for _ in range(requests):
        policy.tree.record(node, worker, (1.0, 0.0, 0.0))


def report(policy: LatencyPolicy, worker: str, total: int, used: int | None = None,
           evictable: int | None = None) -> None:
    """A load report: `used` of `total` pages in use (default all), `evictable` of them (default
    all in use)."""
    used = total if used is None else used
    policy.on_load(LoadReport(worker, 0.0, 0, 0, 0, used, used if evictable is None else evictable, total, PS,
                              0.0, 0.0, 0))


def test_evicting_costs_the_reuse_of_the_pages_evicted_least_recent_first():
    policy, _ = make()
    store(policy, "w0", HOT, requests=3)  # stored first: the least recently used
    store(policy, "w0", COLD, requests=1)
    tree, bucket = policy.tree, policy.tree.bucket()
    hot = tree.match(HOT).path[-1]

    def cost(pages: int, keep=(), scale: float = 1.0) -> float:
        return VictimCurve(tree, "w0", bucket, PS, COST, scale).evict(pages, keep)

    # The last 2 pages of HOT go first; each of its 2 reuses would compute those 8 tokens again.
    assert cost(2) == pytest.approx(2 * COST.prefill_time(8, 24))
    assert cost(8) == pytest.approx(2 * COST.prefill_time(32, 0))
    assert cost(16) == pytest.approx(cost(8))  # COLD was never reused: evicting it costs nothing
    assert cost(16, keep={hot}) == 0.0  # the request's own prefix is not evicted
    assert cost(8, scale=2.0) == pytest.approx(2 * cost(8))
    every = VictimCurve(tree, "w0", bucket, PS, COST, count_storer=True)  # E2's M: the storing request counts
    assert every.evict(16, ()) == pytest.approx(3 * COST.prefill_time(32, 0) + COST.prefill_time(32, 0))


def test_a_new_prompt_goes_where_the_full_cache_would_evict_what_is_reused_least():
    def costs(eviction: bool) -> tuple[str, dict[str, float]]:
        policy, _ = make(eviction)
        store(policy, "w0", HOT, requests=5)
        store(policy, "w1", COLD, requests=1)
        for w in ("w0", "w1"):
            report(policy, w, total=8)  # full: the new prompt's 4 pages evict 4 of the 8 held
        d = policy.route(RouteRequest("new", list(range(3000, 3016)), 1))
        return d.worker_id, d.costs

    chosen, priced = costs(eviction=True)
    _, blind = costs(eviction=False)
    assert chosen == "w1"
    assert priced["w0"] - blind["w0"] == pytest.approx(4 * COST.prefill_time(16, 16))
    assert priced["w1"] == pytest.approx(blind["w1"])


def test_eviction_starts_where_the_free_pages_end_and_stops_at_the_evictable_ones():
    policy, _ = make()
    store(policy, "w0", HOT, requests=5)
    store(policy, "w1", HOT, requests=5)
    new = list(range(3000, 3016))  # 4 pages

    def eviction() -> list[float]:
        return policy.estimates(policy.view.match(new), 16, 1, 0.0).eviction.tolist()

    report(policy, "w0", total=12, used=8)  # room for the new prompt's 4 pages
    assert eviction() == [0.0, 0.0]  # w1 has sent no load report: its room is unknown
    report(policy, "w0", total=12, used=9)  # one page short: HOT's last page goes
    assert eviction() == pytest.approx([4 * COST.prefill_time(4, 28), 0.0])
    report(policy, "w0", total=12, used=9, evictable=0)  # nothing it could evict: it would wait instead
    assert eviction() == [0.0, 0.0]
    report(policy, "w0", total=12, used=4)  # 8 free, then a routed prompt takes 5 of them
    policy.route(RouteRequest("r", list(range(4000, 4020)), 1))
    assert policy._loads.row("w0")["pages_since_report"] == 5
    assert eviction()[0] == pytest.approx(4 * COST.prefill_time(4, 28))


def test_the_cost_follows_the_worker_s_lru_as_it_changes():
    policy, _ = make(workers=("w0",))
    store(policy, "w0", HOT, requests=3)
    store(policy, "w0", COLD, requests=1)
    report(policy, "w0", total=16)
    new = list(range(3000, 3016))

    def eviction() -> float:
        return float(policy.estimates(policy.view.match(new), 16, 1, 0.0).eviction[0])

    assert eviction() == pytest.approx(2 * COST.prefill_time(16, 16))  # HOT is the least recent
    policy.route(RouteRequest("again", HOT + [1, 2, 3, 4], 1))  # HOT used again: the most recent now
    assert eviction() == 0.0  # COLD goes first, and nothing reused it


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 5))
def test_pricing_eviction_only_where_it_can_decide_picks_the_cheapest_of_the_full_prices(seed, n_workers):
    rng = random.Random(seed)
    workers = tuple(f"w{i}" for i in range(n_workers))
    policy, clock = make(workers=workers)
    prefixes = [[rng.randrange(1, 60) for _ in range(rng.choice([8, 16, 32]))] for _ in range(4)]
    for i in range(30):
        clock.t += rng.choice([0.0, 0.05, 0.5])
        for w in workers:
            if rng.random() < 0.3:
                report(policy, w, total=24, used=rng.randrange(8, 25), evictable=rng.randrange(0, 9))
        q = rng.choice(prefixes) + [rng.randrange(1, 60) for _ in range(rng.randrange(0, 12))]
        match = policy.view.match(q)
        full = policy.estimates(match, len(q), policy._expected_output(4, clock.t), clock.t).total
        d = policy.route(RouteRequest(f"r{i}", q, 4))
        assert full[workers.index(d.worker_id)] == pytest.approx(full.min())
        assert all(d.costs[w] <= full[k] + 1e-9 for k, w in enumerate(workers))  # a bound where not priced
