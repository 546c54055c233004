"""What e2's cost holds for an external engine (`--worker-kind openai|vllm|sglang`): such engines
send no load report, so e2 does not know their KV capacity and prices no eviction (M = 0); a
worker's cost there is its load plus the prefill of what it does not hold. A Preble worker on
the same history, whose report says its KV is full, pays for evicting what it must."""

from __future__ import annotations

from preble.core.cost_model import CostModel
from preble.core.messages import LoadReport
from preble.core.routing.base import RequestDone, RouteRequest
from preble.core.routing.e2 import E2Config, E2Policy

from .clocks import ManualClock

PAGE = 4
FIRST = [(3 * i) % 400 + 5 for i in range(40)]  # 10 pages
SECOND = [(7 * i) % 400 + 11 for i in range(40)]  # 10 other pages


def full_kv(worker_id: str, pages: int) -> LoadReport:
    """A Preble worker's report: every page used, all of them evictable (nothing running)."""
    return LoadReport(worker_id, 0.0, running=0, waiting=0, waiting_tokens=0, kv_used_pages=pages,
                      kv_evictable_pages=pages, kv_total_pages=pages, page_size=PAGE, hit_ratio=0.0, tpot=0.0,
                      num_preemptions=0)


def second_request_costs(report: LoadReport | None) -> tuple[E2Policy, dict[str, float]]:
    """Route FIRST (finished), then, with `report` as the worker's last (None: it sends none), SECOND."""
    policy = E2Policy(ManualClock(100.0), config=E2Config(page_size=PAGE))
    policy.add_worker("w")
    policy.route(RouteRequest("r1", FIRST, 4))
    policy.on_done(RequestDone("r1", "w", len(FIRST), 0, 4, 0.05, 0.1))
    if report is not None:
        policy.on_load(report)
    decision = policy.route(RouteRequest("r2", SECOND, 4))
    assert (decision.worker_id, decision.branch) == ("w", "explore")
    return policy, decision.costs


def test_an_external_engine_is_priced_without_eviction():
    cost = CostModel()
    # Before the second request: its load (L) is FIRST's windowed prefill, the only one routed there.
    policy, costs = second_request_costs(None)
    load = cost.prefill_time(len(FIRST), 0)
    assert costs == {"w": load + 0.0 + cost.prefill_time(len(SECOND), 0)}  # L + M (none) + P
    assert policy.tree.held_pages("w") == 20  # it is believed to hold both prompts, yet nothing is evicted

    # The same history on a Preble worker whose 10-page KV is full of FIRST: SECOND's 10 pages
    # and its output's page evict all of FIRST, which one request used: M is FIRST's prefill.
    _, costs = second_request_costs(full_kv("w", 10))
    assert costs == {"w": load + cost.prefill_time(len(FIRST), 0) + cost.prefill_time(len(SECOND), 0)}
