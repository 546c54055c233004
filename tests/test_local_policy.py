"""Scripted scenarios for the waiting-queue policies (fcfs, lpm, preble) with a fake clock."""

from __future__ import annotations

import pytest

from preble.core.local_policy import FCFSQueue, LPMQueue, PrebleQueue, PrebleQueueConfig, make_waiting_queue
from preble.core.request import Request
from preble.core.sampling_params import SamplingParams

from .clocks import TickingClock

PROMPT_LEN = 10



def make(name: str, clock: TickingClock, first_token: int) -> Request:
    """A request whose prompt starts with `first_token`, so a fake matcher can key on it."""
    return Request(name, [first_token] * PROMPT_LEN, SamplingParams(), clock())


def matcher(hits: dict[int, int]):
    return lambda tokens: hits.get(tokens[0], 0)


def names(reqs) -> list[str]:
    return [r.request_id for r in reqs]


def test_fcfs_orders_by_arrival_and_preempted_requests_keep_their_place():
    clock, q = TickingClock(), FCFSQueue()
    a, b, c = make("a", clock, 1), make("b", clock, 2), make("c", clock, 3)
    for r in (c, a, b):
        q.add(r)
    assert names(q.ordered(matcher({3: 10}))) == ["a", "b", "c"]
    q.remove(a)
    q.add(a)  # back from preemption: still the oldest
    assert names(q.ordered(matcher({}))) == ["a", "b", "c"]


def test_lpm_orders_by_longest_match_then_arrival():
    clock, q = TickingClock(), LPMQueue()
    reqs = [make(n, clock, t) for n, t in [("a", 1), ("b", 2), ("c", 3), ("d", 2)]]
    for r in reqs:
        q.add(r)
    assert names(q.ordered(matcher({2: 8, 3: 4}))) == ["b", "d", "c", "a"]


def test_preble_groups_by_hit_ratio_and_visits_with_quotas():
    """P=3, k=1: quotas are 3 (group 2), 2 (group 1), 1 (group 0) per visit."""
    clock, q = TickingClock(), PrebleQueue(PrebleQueueConfig(num_groups=3, quota_step=1))
    hits = {1: 10, 2: 5, 3: 0}  # ratios 1.0 -> group 2, 0.5 -> group 1, 0.0 -> group 0
    spec = [("c1", 3), ("a1", 1), ("b1", 2), ("a2", 1), ("a3", 1), ("b2", 2), ("a4", 1),
            ("c2", 3), ("b3", 2), ("a5", 1)]
    for n, t in spec:
        q.add(make(n, clock, t))
    order = names(q.ordered(matcher(hits)))
    assert order == ["a1", "a2", "a3", "b1", "b2", "c1", "a4", "a5", "b3", "c2"]


def test_preble_carries_its_visit_over_to_the_next_step():
    clock, q = TickingClock(), PrebleQueue(PrebleQueueConfig(num_groups=3, quota_step=1))
    hits = matcher({1: 10, 2: 5, 3: 0})
    reqs = {n: make(n, clock, t) for n, t in [("a1", 1), ("a2", 1), ("a3", 1), ("a4", 1), ("b1", 2), ("c1", 3)]}
    for r in reqs.values():
        q.add(r)
    order = q.ordered(hits)
    assert names(order) == ["a1", "a2", "a3", "b1", "c1", "a4"]
    for r in order[:2]:  # the step admitted two of them
        q.remove(r)
    q.admitted(2)
    # Group 2 has one admission left in this visit, then group 1's visit begins.
    assert names(q.ordered(hits)) == ["a3", "b1", "c1", "a4"]
    q.remove(reqs["a3"])
    q.admitted(1)
    assert names(q.ordered(hits)) == ["b1", "c1", "a4"]


def test_preble_recomputes_groups_as_the_cache_changes():
    clock, q = TickingClock(), PrebleQueue(PrebleQueueConfig(num_groups=2, quota_step=5))
    a, b = make("a", clock, 1), make("b", clock, 2)
    q.add(a)
    q.add(b)
    assert names(q.ordered(matcher({1: 10}))) == ["a", "b"]
    assert names(q.ordered(matcher({2: 10}))) == ["b", "a"]


def _admit_stream(q, steps: int, per_step: int, arrivals_per_step: int, hits) -> int | None:
    """Feed high-hit arrivals each step, admit `per_step`; return the step the low-hit request left."""
    clock = TickingClock()
    low = make("low", clock, 3)
    q.add(low)
    for step in range(steps):
        for i in range(arrivals_per_step):
            q.add(make(f"hot{step}-{i}", clock, 1))
        order = q.ordered(hits)[:per_step]
        for r in order:
            q.remove(r)
        q.admitted(len(order))
        if low in order:
            return step
    return None


def test_preble_never_starves_low_hit_requests_where_lpm_does():
    hits = matcher({1: 10, 3: 0})
    assert _admit_stream(LPMQueue(), steps=200, per_step=3, arrivals_per_step=3, hits=hits) is None
    config = PrebleQueueConfig()
    step = _admit_stream(PrebleQueue(config), steps=200, per_step=3, arrivals_per_step=3, hits=hits)
    # One full cycle admits at most P*k from the hot group before group 0 gets its turn.
    assert step is not None and step <= config.num_groups * config.quota_step // 3 + 1


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown local policy"):
        make_waiting_queue("sjf")


@pytest.mark.parametrize("queue", [LPMQueue(window=2), PrebleQueue(PrebleQueueConfig(window=2))])
def test_only_the_oldest_window_is_ranked_the_rest_follow_by_arrival(queue):
    clock = TickingClock()
    for n, t in [("a", 1), ("b", 2), ("c", 3), ("d", 3)]:
        queue.add(make(n, clock, t))
    # b, c and d are full hits, but only a and b are ranked: b first, then a; c, d by arrival.
    assert names(queue.ordered(matcher({2: PROMPT_LEN, 3: PROMPT_LEN}))) == ["b", "a", "c", "d"]
    queue.admitted(4)
