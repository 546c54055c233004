"""The latency policy against a brute-force model of its prediction, and its rules in scenarios."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preble.core.cost_model import CostModel
from preble.core.kv_events import ROOT_HASH, PagesStored, chain_hashes
from preble.core.messages import LoadReport
from preble.core.routing import make_policy
from preble.core.routing.base import RequestDone, RouteRequest
from preble.core.routing.latency import LatencyConfig, LatencyPolicy, estimate
from preble.core.routing.worker_load import LoadView

from .clocks import ManualClock

PS = 4
# Round numbers, so the expected costs below can be checked by hand.
COST = CostModel(a=0.01, b=0.001, c=0.0, d=0.005, e=0.001, f=0.0001)



def make(workers=("w0", "w1", "w2"), **cfg) -> tuple[LatencyPolicy, ManualClock]:
    clock = ManualClock()
    policy = LatencyPolicy(clock, COST, LatencyConfig(page_size=PS, step_tokens=8, **cfg))
    for w in workers:
        policy.add_worker(w)
    return policy, clock


def test_estimate_by_hand():
    view = LoadView(queue_s=0.5, batch=2, context=100, step_tokens=8)
    e = estimate(COST, view, prompt=20, held=8, output=10, config=LatencyConfig())
    compute = 0.01 + 0.001 * 12  # 12 new tokens
    batch_step = 0.005 + 0.001 * 2 + 0.0001 * 100
    with_it = 0.005 + 0.001 * 3 + 0.0001 * (100 + 20 + 5)
    assert e.held == 8 and e.wait == 0.5
    assert e.prefill == pytest.approx(compute + 2 * batch_step)  # 12 tokens in passes of 8: two passes
    assert e.decode == pytest.approx(10 * with_it)
    assert e.interference == pytest.approx(2 * (compute + 10 * (with_it - batch_step)))
    assert e.work == pytest.approx(compute)  # one second of others' waiting per second of compute
    assert e.total == pytest.approx(e.wait + e.prefill + e.decode + e.interference + e.work)
    off = estimate(COST, view, 20, 8, 10, LatencyConfig(wait=False, decode=False, interference=False,
                                                          work_weight=0.0))
    assert (off.wait, off.decode, off.interference, off.work) == (0.0,) * 4 and off.prefill == e.prefill


def test_the_backlog_term_charges_the_arrivals_that_queue_behind_the_work():
    """A second of compute on a worker costs later requests w + (1 + w) x rate x B seconds, w the
    work weight and B the fleet's shortest queue (those arriving while B drains wait behind it
    wherever they go; 1 + w is 1 / (1 - u) at the u where u / (1 - u) = w). With `backlog_fleet`
    off, B is the worker's own queue; with `backlog` off, only w."""
    view = LoadView(queue_s=np.array([0.0, 0.5, 2.0]), batch=np.zeros(3), context=np.zeros(3), step_tokens=np.full(3, 8))
    held = np.array([0, 0, 8])
    compute = 0.01 + 0.001 * (20 - held)
    plain = estimate(COST, view, 20, held, 10, LatencyConfig(backlog=False), arrival_rate=3.0)
    assert plain.work == pytest.approx(compute)
    own = estimate(COST, view, 20, held, 10, LatencyConfig(backlog_fleet=False, work_weight=0.5), arrival_rate=3.0)
    assert own.work == pytest.approx((0.5 + 1.5 * 3.0 * np.array([0.0, 0.5, 2.0])) * compute)
    assert estimate(COST, view, 20, held, 10, LatencyConfig()).work == pytest.approx(compute)  # no rate yet
    fleet = estimate(COST, view, 20, held, 10, LatencyConfig(), arrival_rate=3.0)
    assert fleet.work == pytest.approx(1.0 * compute)  # the shortest queue is empty: nothing must wait
    busy = LoadView(queue_s=view.queue_s + 1.0, batch=view.batch, context=view.context, step_tokens=view.step_tokens)
    fleet = estimate(COST, busy, 20, held, 10, LatencyConfig(), arrival_rate=3.0)
    assert fleet.work == pytest.approx((1.0 + 2 * 3.0 * 1.0) * compute)  # every worker has a second queued


def test_the_backlog_terms_rate_is_the_windows_decisions_per_worker():
    policy, clock = make(workers=("w0", "w1"), output_window_s=60.0)
    for i in range(30):  # 30 decisions over 10 s: 1.5 a second per worker
        clock.t = i / 3
        policy.route(RouteRequest(f"r{i}", [i + 3] * 8, 1))
    clock.t = 10.0
    assert policy._arrival_rate(clock.t) == pytest.approx(30 / 10 / 2)
    clock.t = 100.0  # the window (60 s) has run: its span, not the time since the first decision
    assert policy._arrival_rate(clock.t) == pytest.approx(0.0)


def test_idle_cluster_sends_a_prefix_back_to_its_holder_and_new_prefixes_elsewhere():
    policy, clock = make()
    a, b = list(range(100, 140)), list(range(200, 240))
    first = policy.route(RouteRequest("r0", a, 4))
    policy.on_done(RequestDone("r0", first.worker_id, 40, 0, 4, 0.1, 0.2))
    clock.t = 10.0
    again = policy.route(RouteRequest("r1", a + [7, 8, 9, 10], 4))
    assert again.worker_id == first.worker_id and again.branch == "hit" and again.matched_tokens == 40
    other = policy.route(RouteRequest("r2", b, 4))  # the holder is busy with r1 now: another worker
    assert other.worker_id != first.worker_id and other.branch == "miss"


def test_a_hot_prefix_spills_to_a_second_worker_once_its_queue_outweighs_the_recompute():
    policy, clock = make(workers=("w0", "w1"))
    prefix = list(range(1000, 1400))  # 400 tokens: 0.41 s to prefill, ~0.02 s for a 12-token suffix
    policy.on_kv_event("w0", PagesStored(ROOT_HASH, chain_hashes(prefix, PS), prefix))
    chosen = []
    for i in range(40):  # a burst: all at t=0, none done
        chosen.append(policy.route(RouteRequest(f"h{i}", prefix + [i] * 12, 1)).worker_id)
    assert chosen[0] == "w0"
    spill = chosen.index("w1")
    assert spill > 1  # several stay with the holder first
    # From then on both hold it (w1 by the routed prompt): the burst is shared.
    assert 0.3 < chosen.count("w1") / len(chosen) < 0.7


def test_idle_workers_take_copies_of_a_hot_prefix_before_its_queue_alone_would_send_them():
    def first_copy(copy_credit: bool) -> int:
        policy, clock = make(workers=("w0", "w1", "w2", "w3"), copy_credit=copy_credit)
        prefix = list(range(1000, 1400))
        policy.on_kv_event("w0", PagesStored(ROOT_HASH, chain_hashes(prefix, PS), prefix))
        chosen = []
        for i in range(12):  # one every 50 ms, each still decoding when the next comes
            clock.t += 0.05
            chosen.append(policy.route(RouteRequest(f"h{i}", prefix + [i] * 12, 1)).worker_id)
        assert chosen[0] == "w0"
        return next(i for i, w in enumerate(chosen) if w != "w0")

    # The credit counts what the copy saves the requests that follow (two seen so far), not this one alone.
    assert first_copy(True) < first_copy(False)


def test_a_report_of_no_prefill_work_drains_the_predicted_queue():
    policy, clock = make(workers=("w0",))
    policy.route(RouteRequest("r0", list(range(400)), 1))
    assert policy.load_of("w0") == pytest.approx(0.41)  # nothing decodes there to share its passes
    # Prefill tokens the worker reports are no floor (they may be cached by admission time).
    policy.on_load(LoadReport("w0", 0.0, 0, 3, 5000, 0, 0, 1000, PS, 0.0, 0.0, 0, prefill_tokens=5000,
                              prefill_requests=3, step_tokens=512))
    assert policy.load_of("w0") == pytest.approx(0.41)
    assert policy._loads.row("w0")["step_tokens"] == 512
    # It says it has nothing left to prefill: the queue is only what was routed since.
    policy.on_load(LoadReport("w0", 0.0, 1, 0, 0, 0, 0, 1000, PS, 0.0, 0.0, 0, prefill_tokens=0))
    assert policy.load_of("w0") == 0.0
    policy.route(RouteRequest("r1", list(range(1000, 1100)), 1))  # 100 tokens: one pass of 512
    routed = policy.load_of("w0")
    policy.on_load(LoadReport("w0", 0.0, 1, 0, 0, 0, 0, 1000, PS, 0.0, 0.0, 0, prefill_tokens=0))
    assert policy.load_of("w0") == pytest.approx(routed) and routed > 0.1


def test_ablations_switch_terms_off():
    policy, _ = make(cache_aware=False)
    prefix = list(range(500, 600))
    policy.on_kv_event("w2", PagesStored(ROOT_HASH, chain_hashes(prefix, PS), prefix))
    d = policy.route(RouteRequest("r0", prefix + [1, 2, 3, 4], 1))
    assert d.worker_id == "w0"  # blind to the cache: the first worker on a tie
    assert len(set(d.costs.values())) == 1


def test_failed_requests_leave_the_load_and_teach_no_output_length():
    policy, clock = make(workers=("w0",))
    policy.route(RouteRequest("r0", list(range(40)), 100))
    policy.on_done(RequestDone("r0", "w0", 40, 0, 0, 0.0, 0.0, ok=False))
    assert policy._loads.row("w0")["batch"] == 0
    assert policy._expected_output(100, clock()) == 100  # nothing finished: the budget


def test_factory_builds_it_for_the_workers_page_size():
    policy = make_policy("latency", clock=ManualClock(), page_size=8)
    assert isinstance(policy, LatencyPolicy) and policy.config.page_size == 8


# ------------------------------------------------------------------ brute force


class Oracle:
    """The same prediction, recomputed from plain lists at every decision."""

    def __init__(self, workers: list[str], ttl: float) -> None:
        self.workers, self.ttl = workers, ttl
        self.routed: dict[str, list[tuple[float, list[int]]]] = {w: [] for w in workers}  # (time, prompt)
        self.queue: dict[str, list[tuple[float, float]]] = {w: [] for w in workers}  # (time, prefill s)
        self.open: dict[str, tuple[str, int]] = {}  # request id -> (worker, context)
        self.outputs: list[int] = []
        self.first: float | None = None  # the first decision's time

    def held(self, w: str, q: list[int], now: float) -> int:
        return max((self.shared(p, q) for t, p in self.routed[w] if t + self.ttl > now), default=0)

    def busy_until(self, w: str) -> float:
        end = -math.inf
        for t, s in self.queue[w]:
            end = max(end, t) + s
        return end

    def view(self, w: str, now: float) -> LoadView:
        mine = [c for r, (x, c) in self.open.items() if x == w]
        return LoadView(max(0.0, self.busy_until(w) - now), len(mine), sum(mine), 8)

    def costs(self, q: list[int], max_tokens: int, now: float) -> tuple[dict[str, float], dict[str, float], int]:
        """Each worker's total cost and the prefill seconds it would queue; the expected output."""
        self.first = now if self.first is None else self.first
        out = max_tokens if not self.outputs else min(max_tokens, round(sum(self.outputs) / len(self.outputs)))
        span = max(LatencyConfig.min_rate_span_s, now - self.first)  # the test stays inside the windows
        rate = sum(len(r) for r in self.routed.values()) / span / len(self.workers)
        shortest = min(self.view(w, now).queue_s for w in self.workers)
        # the backlog part: arrivals while the shortest queue drains wait behind the work, over 1 - u = 1/2
        cfg = LatencyConfig(backlog=False, work_weight=1.0 + 2.0 * rate * shortest)
        est = {w: estimate(COST, self.view(w, now), len(q), self.held(w, q, now), out, cfg) for w in self.workers}
        totals = {w: e.total for w, e in est.items()}
        cached = max(e.held for e in est.values())
        holders = [w for w in self.workers if est[w].held >= cached]
        node_end = self.deepest_node_end(q, cached)
        if cached and node_end:
            best_holder = min(totals[w] for w in holders)
            requests = sum(1 for w in self.workers for _, p in self.routed[w] if self.shared(p, q) >= node_end)
            for w in self.workers:
                if w in holders or self.view(w, now).batch:
                    continue
                as_holder = estimate(COST, self.view(w, now), len(q), cached, out, cfg).total
                rate = len(self.routed[w]) / span
                saving = max(0.0, best_holder - as_holder)
                totals[w] -= max(0.0, requests / (len(holders) + 1) * saving - rate * est[w].prefill ** 2 / 2)
        return totals, {w: e.prefill for w, e in est.items()}, out

    @staticmethod
    def shared(p: list[int], q: list[int]) -> int:
        """Whole pages of p that q starts with (p's own tail page excluded: the tree holds pages)."""
        n = 0
        while n < min(len(p) - len(p) % PS, len(q)) and p[n] == q[n]:
            n += 1
        return n - n % PS

    def deepest_node_end(self, q: list[int], cached: int) -> int:
        """Where the deepest radix-tree node inside q's cached prefix ends: nodes end where routed
        prompts end or part from each other."""
        prompts = [p for w in self.workers for _, p in self.routed[w]]
        on_q = [p for p in prompts if self.shared(p, q) > 0]
        ends = {e for p in on_q if self.shared(p, q) >= (e := len(p) - len(p) % PS)}
        ends |= {e for a in on_q for b in prompts if a is not b and self.shared(a, q) >= (e := self.shared(a, b + [-1]))}
        return max((e for e in ends if 0 < e <= cached), default=0)

    def commit(self, rid: str, w: str, q: list[int], prefill_s: float, out: int, now: float) -> None:
        self.routed[w].append((now, q))
        self.queue[w].append((now, prefill_s))
        self.open[rid] = (w, len(q) + out // 2)

    def done(self, rid: str, output: int) -> None:
        self.open.pop(rid, None)
        self.outputs.append(output)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 4))
def test_decisions_match_the_brute_force_model(seed, n_workers):
    rng = random.Random(seed)
    workers = [f"w{i}" for i in range(n_workers)]
    policy, clock = make(workers=tuple(workers), routed_ttl_s=5.0)
    oracle = Oracle(workers, 5.0)
    prefixes = [[rng.randrange(1, 50) for _ in range(rng.choice([4, 12, 40]))] for _ in range(3)]
    live: dict[str, int] = {}  # request id -> tokens its worker was believed to hold (it reports as much)
    for i in range(40):
        clock.t += rng.choice([0.0, 0.01, 0.3, 2.0])
        if live and rng.random() < 0.4:
            rid = rng.choice(sorted(live))
            out = rng.randrange(1, 6)
            policy.on_done(RequestDone(rid, "?", 0, live.pop(rid), out, 0.1, 0.2))
            oracle.done(rid, out)
            continue
        q = rng.choice(prefixes) + [rng.randrange(1, 50) for _ in range(rng.randrange(0, 9))]
        max_tokens = rng.randrange(1, 8)
        costs, prefill, out = oracle.costs(q, max_tokens, clock.t)
        d = policy.route(RouteRequest(f"r{i}", q, max_tokens))
        assert d.costs == pytest.approx(costs)
        best = min(costs.values())
        assert costs[d.worker_id] == pytest.approx(best)  # ties differ only in float rounding
        oracle.commit(f"r{i}", d.worker_id, q, prefill[d.worker_id], out, clock.t)
        live[f"r{i}"] = d.matched_tokens


def test_a_removed_worker_leaves_the_others_as_they_were():
    policy, clock = make()
    for i in range(6):
        policy.route(RouteRequest(f"r{i}", [i] * 16, 4))
    before = {w: policy._loads.row(w) for w in ("w0", "w2")}
    gone = [rid for rid, p in policy._pending.items() if p.worker == "w1"]
    assert gone  # new prefixes spread: w1 serves some
    policy.remove_worker("w1")
    assert {w: policy._loads.row(w) for w in ("w0", "w2")} == before
    for rid in gone:  # a late completion from the removed worker changes nothing
        policy.on_done(RequestDone(rid, "w1", 16, 0, 4, 0.1, 0.2))
    assert {w: policy._loads.row(w) for w in ("w0", "w2")} == before
    d = policy.route(RouteRequest("r9", [9] * 16, 4))
    assert d.worker_id in ("w0", "w2") and set(d.costs) == {"w0", "w2"}
