"""What the router's pages read of a policy, through its introspection interface only: plain data
for every registered policy, per-prefix statistics from those that keep them."""

from __future__ import annotations

import pytest

from preble.core.routing import POLICIES, make_policy
from preble.core.routing.base import HotPrefixes, RequestDone, RouteRequest, WorkerInfo

from .clocks import ManualClock

SYSTEM = list(range(100, 164))  # 64 shared tokens: 4 pages of 16
LOADED = {"latency", "e2", "preble_paper"}  # keep a load figure per worker
PREFIX_STATS = {"latency", "e2"}  # keep per-prefix statistics over a window



@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_describes_its_workers_and_hot_prefixes_as_plain_data(name):
    clock = ManualClock()
    policy = make_policy(name, clock=clock)
    for w in ("w0", "w1"):
        policy.add_worker(w)
    for i in range(12):
        clock.t += 0.05
        prompt = SYSTEM + [1000 + i] * 16
        d = policy.route(RouteRequest(f"r{i}", prompt, 8))
        if i % 2:
            policy.on_done(RequestDone(f"r{i}", d.worker_id, len(prompt), 0, 8, 0.1, 0.2))
    info = policy.worker_info("w0")
    assert isinstance(info, WorkerInfo)
    assert (info.load_s is not None) == (name in LOADED)
    hot = policy.hot_prefixes(5, 1000)
    assert isinstance(hot, HotPrefixes)
    if name in PREFIX_STATS:
        assert hot.window_s > 0 and hot.prefixes
        top = hot.prefixes[0]
        assert top.tokens == SYSTEM and top.requests_in_window == 12
        assert set(top.held_by) <= {"w0", "w1"} and top.held_by
    else:
        assert hot == HotPrefixes(None)
    assert policy.worker_info("unknown").load_s is None
