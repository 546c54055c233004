"""The eviction term: what a request's pages evict from a full cache, priced by hand, and what the
default policy does with it."""

from __future__ import annotations

import pytest

from preble.core.cost_model import CostModel
from preble.core.kv_events import ROOT_HASH, PagesStored, chain_hashes
from preble.core.messages import LoadReport
from preble.core.routing.base import RouteRequest
from preble.core.routing.eviction import eviction_cost
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


def report(policy: LatencyPolicy, worker: str, total_pages: int) -> None:
    policy.on_load(LoadReport(worker, 0.0, 0, 0, 0, total_pages, total_pages, total_pages, PS, 0.0, 0.0, 0))


def test_evicting_costs_the_reuse_of_the_pages_evicted_least_recent_first():
    policy, _ = make()
    store(policy, "w0", HOT, requests=3)  # stored first: the least recently used
    store(policy, "w0", COLD, requests=1)
    tree, bucket = policy.tree, policy.tree.bucket()
    hot = tree.match(HOT).path[-1]

    def cost(pages: int, keep=()) -> float:
        return eviction_cost(tree, "w0", pages, keep, bucket, PS, COST)

    # The last 2 pages of HOT go first; each of its 2 reuses would compute those 8 tokens again.
    assert cost(2) == pytest.approx(2 * COST.prefill_time(8, 24))
    assert cost(8) == pytest.approx(2 * COST.prefill_time(32, 0))
    assert cost(16) == pytest.approx(cost(8))  # COLD was never reused: evicting it costs nothing
    assert cost(16, keep={hot}) == 0.0  # the request's own prefix is not evicted
    assert eviction_cost(tree, "w0", 8, (), bucket, PS, COST, prefill_scale=2.0) == pytest.approx(2 * cost(8))


def test_a_new_prompt_goes_where_the_full_cache_would_evict_what_is_reused_least():
    def costs(eviction: bool) -> tuple[str, dict[str, float]]:
        policy, _ = make(eviction)
        store(policy, "w0", HOT, requests=5)
        store(policy, "w1", COLD, requests=1)
        for w in ("w0", "w1"):
            report(policy, w, total_pages=8)  # full: the new prompt's 4 pages evict 4 of the 8 held
        d = policy.route(RouteRequest("new", list(range(3000, 3016)), 1))
        return d.worker_id, d.costs

    chosen, priced = costs(eviction=True)
    _, blind = costs(eviction=False)
    assert chosen == "w1"
    assert priced["w0"] - blind["w0"] == pytest.approx(4 * COST.prefill_time(16, 16))
    assert priced["w1"] == pytest.approx(blind["w1"])


def test_no_eviction_cost_while_the_cache_has_room_or_its_size_is_unknown():
    policy, _ = make()
    store(policy, "w0", HOT, requests=5)
    store(policy, "w1", HOT, requests=5)
    report(policy, "w0", total_pages=12)  # room for the new prompt's 4 pages
    est = policy.estimates(policy.view.match(list(range(3000, 3016))), 16, 1, 0.0)
    assert list(est.eviction) == [0.0, 0.0]  # w1 has sent no load report: its size is unknown
    report(policy, "w0", total_pages=11)
    est = policy.estimates(policy.view.match(list(range(3000, 3016))), 16, 1, 0.0)
    assert est.eviction[0] == pytest.approx(4 * COST.prefill_time(4, 28)) and est.eviction[1] == 0.0


def test_the_cost_follows_the_worker_s_lru_as_it_changes():
    policy, _ = make(workers=("w0",))
    store(policy, "w0", HOT, requests=3)
    store(policy, "w0", COLD, requests=1)
    report(policy, "w0", total_pages=16)
    new = list(range(3000, 3016))

    def eviction() -> float:
        return float(policy.estimates(policy.view.match(new), 16, 1, 0.0).eviction[0])

    assert eviction() == pytest.approx(2 * COST.prefill_time(16, 16))  # HOT is the least recent
    policy.route(RouteRequest("again", HOT + [1, 2, 3, 4], 1))  # HOT used again: the most recent now
    assert eviction() == 0.0  # COLD goes first, and nothing reused it
