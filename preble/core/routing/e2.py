"""E2: Preble's global scheduler (paper section 4).

Each request is matched on the global tree. If the longest cached prefix is longer than the
rest, E2 exploits: it goes to the cheapest worker holding that prefix. Otherwise it explores: the
cheapest of all workers, where a worker's cost is L + M + P in GPU seconds:

- L, its load: the windowed prefill seconds of the requests routed to it (per-node,
  per-worker windowed sums in the tree; the root's are the worker's) plus the expected output
  tokens of its outstanding requests times an unloaded decode step's time (the cost model's, at
  their mean context). Decode load counts only requests still running: it shows a queue building
  up at once and stops counting when it drains, where a windowed sum would lag both ways.
- M, the eviction cost: the pages this request needs beyond the worker's free ones are taken from
  its least recently used nodes; each costs its prefill time times the requests that used it on
  that worker within the window.
- P, the prefill time of this request's tokens the worker does not hold.

Before comparing explore costs, a decode-heavy worker (windowed hit ratio >= 0.7) takes the
explored, prefill-heavy request ("pd"). When the heaviest worker's L exceeds 1.5x the lightest's,
whole prefix subtrees (their future requests and their windowed load) move from heavy to light
until within the threshold ("rebalance"); if the moves cannot close the gap (a prefix too hot
to move pins the load), that prefix gets the light worker as a replica. A shift must take at
least what the light worker spends recomputing the prefix off the heavy one: long prefixes
(documents) stay put unless their load is worth a second copy. When one prefix's TTFT on a
worker doubles from the window's older half to its newer half, it also gets another worker.
A replicated prefix's requests go to the cheapest of its workers ("replicate"). Steering
decisions live on tree nodes for `assignment_ttl_s`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from heapq import heappop, heappush
from itertools import count

from ..cost_model import CostModel
from ..global_tree import OUTPUT_TOKENS, PREFILL_S, REQUESTS, Node, TreeMatch
from ..kv_events import KVEvent, PagesStored
from ..messages import LoadReport
from ..pages import DEFAULT_PAGE_SIZE
from ..window_stats import ROUTER_WINDOW, WindowSums
from .base import HotPrefixes, RequestDone, RouteDecision, RouteRequest, WorkerInfo
from .cache_view import CacheView, CacheViewConfig, Holding
from .eviction import VictimCurve


class E2Branch(StrEnum):
    """Why E2 sent a request where it did (`RouteDecision.branch`)."""

    EXPLOIT = "exploit"  # the cheapest worker holding its longest cached prefix
    EXPLORE = "explore"  # the cheapest of all workers
    PD = "pd"  # an explored request to the cheapest decode-heavy worker
    REBALANCE = "rebalance"  # its prefix was moved off an overloaded worker
    REPLICATE = "replicate"  # the cheapest of its prefix's replicas


@dataclass(frozen=True)
class E2Config:
    page_size: int = DEFAULT_PAGE_SIZE  # the workers' KV page size; the tree rejects events of another size
    window_s: float = ROUTER_WINDOW.seconds  # H: the window of loads and request statistics (paper: 3 minutes)
    window_buckets: int = ROUTER_WINDOW.buckets  # the window is kept in this many buckets (resolution H / buckets)
    exploit_ratio: float = 1.0  # exploit when cached > exploit_ratio * missing tokens
    pd_hit_ratio: float = 0.7  # a worker whose windowed hit ratio reaches this is decode-heavy
    pd_min_requests: int = 8  # finished requests before the router trusts its own hit ratio of a worker
    rebalance_ratio: float = 1.5  # rebalance when the heaviest L exceeds this times the lightest
    rebalance_min_load_s: float = 5.0  # ... and the heaviest L is at least this (no churn when idle)
    rebalance_max_moves: int = 16  # subtrees moved or prefixes replicated per check at most
    rebalance_min_requests: int = 2  # a subtree moves only if this many requests used it in the window
    rebalance_min_gain: float = 1.0  # a shift must take this times the light worker's recompute seconds off
    rebalance_scan_nodes: int = 256  # subtrees a rebalance check weighs at most (bounds its time)
    rebalance_tops: int = 256  # recently used top-level subtrees per worker that rebalancing starts from
    rebalance_interval_s: float = 0.1  # look for imbalance at most this often (a hot prefix floods fast)
    replicate_ttft_ratio: float = 2.0  # replicate when a prefix's mean TTFT grows this much across the window
    replicate_min_samples: int = 8  # finished requests needed in each half-window (fewer: noise replicates)
    assignment_ttl_s: float = 180.0  # how long a rebalance or replicate decision steers a prefix
    pending_ttl_s: float = 30.0  # a routed prompt counts as held by its worker this long (until KV events tell)
    routed_ttl_s: float = 300.0  # the same for workers that send no KV events (corrected by cached_tokens)
    gc_budget: int = 64  # tree nodes the collector examines per routing decision
    rebalance: bool = True  # move subtrees off overloaded workers (off: for ablations)
    replicate: bool = True  # give hot prefixes more workers (off: for ablations)
    pd_balance: bool = True  # send prefill-heavy explores to decode-heavy workers (off: for ablations)

    def cache_view(self) -> CacheViewConfig:
        return CacheViewConfig(self.page_size, self.window_s, self.window_buckets, self.pending_ttl_s,
                               self.routed_ttl_s, self.gc_budget)


@dataclass(frozen=True)
class Assignment:
    """Future requests through a node go to one of `workers` (set by rebalance or replicate)."""

    workers: tuple[str, ...]
    reason: E2Branch  # the branch of the requests it routes: REBALANCE or REPLICATE
    until: float


@dataclass(frozen=True, slots=True)
class _Shift:
    """Load to take off a heavy worker: move `node`'s subtree, or replicate `node`."""

    node: Node
    replicate: bool
    load: float  # seconds of load it takes off the heavy worker
    recompute: float  # seconds the light worker spends prefilling the prefix it lacks


@dataclass
class _Worker:
    order: int  # tie-break: the order workers were added
    hits: WindowSums  # (finished requests, prompt tokens, cached tokens)
    report: LoadReport | None = None
    pages_since_report: int = 0  # pages promised to requests routed since the last report
    outstanding: int = 0
    outstanding_tokens: int = 0  # prompt tokens of outstanding requests
    outstanding_output: int = 0  # expected output tokens of outstanding requests
    victims: VictimCurve | None = None  # its eviction costs, while its LRU stands
    tops: OrderedDict[Node, None] = field(default_factory=OrderedDict)  # recently routed-to subtrees


@dataclass(slots=True)
class _Pending:
    worker: str
    time: float
    path_end: Node
    prefix: Node | None  # the node where its cached prefix ended: TTFT is tracked there
    prompt_tokens: int
    prefill_s: float  # estimated at routing
    output_tokens: int  # estimated at routing
    holding: Holding | None  # routed-only workers: what it was believed to hold, to check the response


class E2Policy:
    name = "e2"

    def __init__(self, clock: Callable[[], float], cost_model: CostModel | None = None,
                 config: E2Config | None = None) -> None:
        self.clock = clock
        self.cost = cost_model or CostModel()
        self.config = cfg = config or E2Config()
        self.view = CacheView(cfg.cache_view(), clock)
        self.tree = self.view.tree
        self._workers: dict[str, _Worker] = {}
        self._pending: dict[str, _Pending] = {}
        self._outputs = WindowSums(cfg.window_buckets, 2)  # (finished requests, output tokens)
        self._added = 0
        self._rebalance_after = float("-inf")  # no imbalance check before this time
        self._scan_left = 0  # subtrees the current rebalance check may still weigh

    # ------------------------------------------------------------------ membership and feeds

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self._workers:
            self._workers[worker_id] = _Worker(self._added, WindowSums(self.config.window_buckets, 3))
            self._added += 1
            self.view.add_worker(worker_id)

    def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)
        self.view.remove_worker(worker_id)
        for rid in [r for r, p in self._pending.items() if p.worker == worker_id]:
            del self._pending[rid]

    def on_kv_event(self, worker_id: str, event: KVEvent) -> None:
        self.view.on_kv_event(worker_id, event)

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        self.view.on_resync(worker_id, stored)

    def worker_info(self, worker_id: str) -> WorkerInfo:
        return self.view.worker_info(worker_id, self.load_of(worker_id) if worker_id in self._workers else None)

    def hot_prefixes(self, limit: int, scan_budget: int) -> HotPrefixes:
        return self.view.hot_prefixes(limit, scan_budget)

    def on_load(self, report: LoadReport) -> None:
        state = self._workers.get(report.worker_id)
        if state is None:
            return
        state.report = report
        state.pages_since_report = 0
        self.view.check_report(report)

    # ------------------------------------------------------------------ routing

    def route(self, req: RouteRequest) -> RouteDecision:
        if not self._workers:
            raise RuntimeError("no workers to route to")
        now = self.clock()
        cfg = self.config
        bucket = self.tree.window.bucket(now)
        if cfg.rebalance and now >= self._rebalance_after:
            self._rebalance_after = now + cfg.rebalance_interval_s
            self._rebalance(now, bucket)
        match = self.view.match(req.token_ids)
        prompt_len = len(req.token_ids)
        expected_output = self._output_estimate(req.max_tokens, bucket)
        cached = match.cached_tokens
        assignment = self._assignment(match, now)
        branch: E2Branch
        if assignment is not None:
            candidates, branch = list(assignment.workers), assignment.reason
        else:
            candidates = [w for w, held in match.held.items() if held == cached and w in self._workers]
            branch = E2Branch.EXPLOIT
            if not candidates or cached <= cfg.exploit_ratio * (prompt_len - cached):
                candidates, branch = list(self._workers), E2Branch.EXPLORE
        path_nodes = set(match.path)
        if match.partial is not None:
            path_nodes.add(match.partial)
        costs = {w: self._cost(w, self._load(w, bucket), match, prompt_len, expected_output, path_nodes, bucket)
                 for w in candidates}
        if branch == E2Branch.EXPLORE and cfg.pd_balance:
            heavy = [w for w in candidates if self._decode_heavy(w, bucket)]
            if heavy and len(heavy) < len(candidates):
                candidates, branch = heavy, E2Branch.PD
        worker = min(candidates, key=lambda w: (costs[w], self._workers[w].order))
        self._commit(req, worker, match, prompt_len, expected_output, now)
        return RouteDecision(worker, branch, match.held.get(worker, 0), costs)

    def _cost(self, worker: str, load: float, match: TreeMatch, prompt_len: int, expected_output: int,
              path_nodes: set, bucket: int) -> float:
        """L + M + P of sending this request to `worker`."""
        held = match.held.get(worker, 0)
        page_size = self.config.page_size
        need_pages = -(-(prompt_len - held) // page_size) + -(-expected_output // page_size)
        return load + self._eviction_cost(worker, need_pages, path_nodes, bucket) + \
            self.cost.prefill_time(prompt_len - held, held)

    def load_of(self, worker_id: str) -> float:
        """L of a worker now, in GPU seconds (for operators; 0 for unknown workers)."""
        if worker_id not in self._workers:
            return 0.0
        return self._load(worker_id, self.tree.bucket())

    def _load(self, worker: str, bucket: int) -> float:
        """L: windowed prefill seconds plus the seconds to decode what is outstanding."""
        return self.tree.load(worker, bucket)[PREFILL_S] + self._decode_s(worker)

    def _decode_s(self, worker: str) -> float:
        """Decode seconds outstanding on `worker`: each expected output token at an unloaded step's
        time (the paper's output x TPOT). Batching makes the GPU time smaller, yet every queued
        decode slows the others; a loaded TPOT instead would grow with the square of the queue
        and overreact to bursts."""
        state = self._workers[worker]
        if state.outstanding <= 0:
            return 0.0
        step = self.cost.tpot(1, state.outstanding_tokens // state.outstanding)
        return self.cost.decode_time(state.outstanding_output, step)

    def _eviction_cost(self, worker: str, need_pages: int, path_nodes: set, bucket: int) -> float:
        """M: what recomputing the LRU nodes the worker must evict to fit `need_pages` costs."""
        state = self._workers[worker]
        report = state.report
        if report is None:
            return 0.0  # capacity unknown: assume it fits
        free_pages = report.kv_total_pages - report.kv_used_pages - state.pages_since_report
        evict_pages = min(need_pages - free_pages, report.kv_evictable_pages)
        if evict_pages <= 0:
            return 0.0
        victims = state.victims
        if victims is None or not victims.current(bucket, 1.0):
            victims = state.victims = VictimCurve(self.tree, worker, bucket, self.config.page_size, self.cost,
                                                  count_storer=True)
        return victims.evict(evict_pages, path_nodes)

    def _decode_heavy(self, worker: str, bucket: int) -> bool:
        state = self._workers[worker]
        if state.report is not None:
            return state.report.hit_ratio >= self.config.pd_hit_ratio
        done, prompt, cached = state.hits.totals(bucket)
        return done >= self.config.pd_min_requests and prompt > 0 and \
            cached / prompt >= self.config.pd_hit_ratio

    def _output_estimate(self, max_tokens: int, bucket: int) -> int:
        """Expected output tokens: the window's mean, capped by the request's budget."""
        done, tokens = self._outputs.totals(bucket)
        return max_tokens if done <= 0 else min(max_tokens, round(tokens / done))

    def _assignment(self, match: TreeMatch, now: float) -> Assignment | None:
        """The deepest live steering decision on the request's path."""
        for node in reversed(match.path):
            assignment = node.assigned
            if assignment is None:
                continue
            if assignment.until <= now:
                node.assigned = None
                continue
            live = tuple(w for w in assignment.workers if w in self._workers)
            if live:
                return Assignment(live, assignment.reason, assignment.until)
        return None

    def _commit(self, req: RouteRequest, worker: str, match: TreeMatch, prompt_len: int, expected_output: int,
                now: float) -> None:
        """Count the request as the worker's load and its prompt as held by the worker."""
        state = self._workers[worker]
        held = match.held.get(worker, 0)
        path, holding = self.view.commit(match, worker)
        if path:
            self._touch_top(state, path[0])
        prefill_s = self.cost.prefill_time(prompt_len - held, held)
        path_end = path[-1] if path else self.tree.root
        self.tree.record(path_end, worker, (1.0, prefill_s, float(expected_output)))
        prefix = None
        if match.cached_tokens > 0:
            prefix = next((node for node in path if node.end == match.cached_tokens), None)
        page_size = self.config.page_size
        state.pages_since_report += -(-(prompt_len - held) // page_size) + -(-expected_output // page_size)
        state.outstanding += 1
        state.outstanding_tokens += prompt_len
        state.outstanding_output += expected_output
        self._pending[req.request_id] = _Pending(worker, now, path_end, prefix, prompt_len, prefill_s,
                                                 expected_output, holding)

    def _touch_top(self, state: _Worker, node: Node) -> None:
        """Remember a top-level subtree the worker was sent work in: where rebalancing looks."""
        state.tops[node] = None
        state.tops.move_to_end(node)
        if len(state.tops) > self.config.rebalance_tops:
            state.tops.popitem(last=False)

    # ------------------------------------------------------------------ feedback

    def on_done(self, done: RequestDone) -> None:
        pending = self._pending.pop(done.request_id, None)
        if pending is None:
            return
        state = self._workers.get(pending.worker)
        if state is None:
            return
        state.outstanding -= 1
        state.outstanding_tokens -= pending.prompt_tokens
        state.outstanding_output -= pending.output_tokens
        now = self.clock()
        if not done.ok:  # it did not run to the end: take back its estimated work
            self.tree.record(pending.path_end, pending.worker,
                             (0.0, -pending.prefill_s, -float(pending.output_tokens)), at=pending.time)
            return
        prefill_s = self.cost.prefill_time(done.prompt_tokens - done.cached_tokens, done.cached_tokens)
        self.tree.record(pending.path_end, pending.worker,
                         (0.0, prefill_s - pending.prefill_s, float(done.output_tokens - pending.output_tokens)),
                         at=pending.time)
        bucket = self.tree.bucket()
        state.hits.add(bucket, (1.0, float(done.prompt_tokens), float(done.cached_tokens)))
        self._outputs.add(bucket, (1.0, float(done.output_tokens)))
        self.view.correct(pending.worker, pending.holding, done.cached_tokens)
        if pending.prefix is not None and self.config.replicate:
            self.tree.record_ttft(pending.prefix, pending.worker, done.ttft)
            self._maybe_replicate(pending.prefix, pending.worker, now)

    # ------------------------------------------------------------------ rebalance and replicate

    def _rebalance(self, now: float, bucket: int) -> None:
        """Shift load from the heaviest to the lightest worker until within the ratio: move a
        subtree, or where the heavy worker's load is pinned by a prefix too hot to move, give
        that prefix the light worker as a replica (counted as taking half its load). The light
        worker pays for each shift by recomputing the prefix, which counts as its load."""
        cfg = self.config
        loads = {w: self._load(w, bucket) for w in self._workers}
        workers = self._workers
        self._scan_left = cfg.rebalance_scan_nodes
        for _ in range(cfg.rebalance_max_moves):
            heavy = max(loads, key=lambda w: (loads[w], -workers[w].order))
            light = min(loads, key=lambda w: (loads[w], workers[w].order))
            if heavy == light or loads[heavy] < cfg.rebalance_min_load_s or \
                    loads[heavy] <= cfg.rebalance_ratio * loads[light]:
                return
            shift = self._pick_shift(heavy, light, loads[heavy] - loads[light], now, bucket)
            if shift is None:
                return
            if shift.replicate:
                self._replicate(shift.node, heavy, light, now)
            else:
                shift.node.assigned = Assignment((light,), E2Branch.REBALANCE, now + cfg.assignment_ttl_s)
                self.tree.move_stats(shift.node, heavy, light)
            top = self.tree.top(shift.node)
            if top is not None:
                self._touch_top(self._workers[light], top)
            loads[heavy] -= shift.load
            loads[light] += shift.load + shift.recompute

    def _pick_shift(self, heavy: str, light: str, gap: float, now: float, bucket: int) -> _Shift | None:
        """What to shift from `heavy` to `light`, whose loads differ by `gap`, or None.

        A shift of load x whose prefix costs `light` c seconds to recompute must be worth it
        (x >= rebalance_min_gain * c) and must not overshoot (light ends below where heavy
        started). A move takes the largest subtree that lives on `heavy` alone (no other worker
        served it in the window) with 2x + c <= gap; replicated prefixes stay where they are.
        Subtrees are visited by decreasing load on `heavy`, so the first movable one is the
        largest, and a part is never worth more than its whole. If no move can close the gap
        within the moves allowed, the hottest prefix pinning `heavy` gets replicated (when
        replication is on): too large to move or shared, `light` neither holds it nor is
        assigned it, no too-large part below it, and x/2 + c <= gap. The search starts from the
        top-level subtrees `heavy` was most recently sent work in, not from every prefix in the
        tree, and weighs at most the check's budget of `rebalance_scan_nodes` subtrees."""
        cfg = self.config
        decode_s = self._decode_s(heavy)
        window_output = self.tree.load(heavy, bucket)[OUTPUT_TOKENS]
        seq = count()
        heap: list[tuple[float, int, Node]] = []  # (-load on `heavy`, insertion order, subtree)

        def push(node: Node) -> None:
            """Queue the subtree by its part of L on `heavy`: its windowed prefill seconds plus its
            share (by windowed output tokens) of the worker's outstanding decode seconds."""
            sums = node.stats.get(heavy) if node.stats else None
            if sums is None or self._scan_left <= 0:
                return
            self._scan_left -= 1
            stats = sums.totals(bucket)
            if stats[REQUESTS] >= cfg.rebalance_min_requests:
                share = stats[OUTPUT_TOKENS] / window_output if window_output > 0 else 0.0
                heappush(heap, (-(stats[PREFILL_S] + share * decode_s), next(seq), node))

        tops = self._workers[heavy].tops
        for node in list(tops):
            if self._scan_left <= 0:
                break
            top = self.tree.top(node)
            if top is not node:  # freed, or split (its upper part is the top now)
                del tops[node]
                if top is None or top in tops:
                    continue
                tops[top] = None
            push(top)
        move: _Shift | None = None
        pinned: list[_Shift] = []
        too_large: set[Node] = set()  # too large to move
        while heap:
            neg_load, _, node = heappop(heap)
            shift_load = -neg_load
            held = self.tree.held_prefix(node, light)
            recompute_s = self.cost.prefill_time(node.end - held, held)
            if shift_load < cfg.rebalance_min_gain * recompute_s:
                continue
            live = _live_assignment(node, now)
            replicated = live is not None and live.reason == E2Branch.REPLICATE
            if not replicated and 2 * shift_load + recompute_s <= gap and \
                    not any(other != heavy and self.tree.stats(node, other, bucket)[REQUESTS] > 0
                            for other in node.stats):
                move = _Shift(node, False, shift_load, recompute_s)
                break
            if 2 * shift_load + recompute_s > gap:
                too_large.add(node)
            if cfg.replicate and (light not in live.workers if live else held < node.end) and \
                    shift_load / 2 >= cfg.rebalance_min_gain * recompute_s and shift_load / 2 + recompute_s <= gap:
                pinned.append(_Shift(node, True, shift_load / 2, recompute_s))
            if not replicated:
                for child in node.children.values():
                    push(child)
        # The hot prefix is the most specific one: a shared ancestor (a system prompt above many
        # tools) pins nothing that its too-large descendants do not.
        hot = max((shift for shift in pinned if not any(child in too_large for child in shift.node.children.values())),
                  key=lambda shift: shift.load, default=None)
        if move is not None and (hot is None or move.load * cfg.rebalance_max_moves >= gap / 2):
            return move
        return hot

    def _replicate(self, node: Node, worker: str, extra: str, now: float) -> None:
        """Steer `node`'s requests to its current workers (or holders, with `worker`) plus `extra`."""
        live = _live_assignment(node, now)
        current = list(live.workers) if live else self.tree.holders(node)
        current = [w for w in dict.fromkeys(current + [worker]) if w in self._workers and w != extra]
        node.assigned = Assignment(tuple(current + [extra]), E2Branch.REPLICATE,
                                   now + self.config.assignment_ttl_s)

    def _maybe_replicate(self, node: Node, worker: str, now: float) -> None:
        """If this prefix's TTFT on `worker` doubled across the window, give it one more worker."""
        cfg = self.config
        (count_old, ttft_sum_old), (count_new, ttft_sum_new) = self.tree.ttft_halves(node, worker)
        if count_old < cfg.replicate_min_samples or count_new < cfg.replicate_min_samples or ttft_sum_old <= 0:
            return
        if ttft_sum_new / count_new < cfg.replicate_ttft_ratio * (ttft_sum_old / count_old):
            return
        live = _live_assignment(node, now)
        current = list(live.workers) if live else self.tree.holders(node)
        others = [w for w in self._workers if w not in current and w != worker]
        if not others:
            return
        bucket = self.tree.window.bucket(now)
        self._replicate(node, worker, min(others, key=lambda w: (self._load(w, bucket), self._workers[w].order)), now)
        self.tree.reset_ttft(node, worker)


def _live_assignment(node: Node, now: float) -> Assignment | None:
    """`node`'s steering decision while it lasts (its workers may since have left)."""
    assignment = node.assigned
    return assignment if assignment is not None and assignment.until > now else None
