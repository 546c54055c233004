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

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
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
    reason: str  # the branch of the requests it routes: rebalance | replicate
    until: float


@dataclass
class _Victims:
    """A worker's LRU nodes as a cumulative (pages, eviction cost) curve, extended on demand and
    valid while the worker's LRU and the window's bucket stay the same."""

    version: int
    bucket: int
    nodes: list[Node] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)  # cumulative
    costs: list[float] = field(default_factory=list)  # cumulative
    it: object = None
    done: bool = False


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
    victims: _Victims | None = None
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
        ws = self._workers.get(report.worker_id)
        if ws is None:
            return
        ws.report = report
        ws.pages_since_report = 0
        self.view.check_report(report)

    # ------------------------------------------------------------------ routing

    def route(self, req: RouteRequest) -> RouteDecision:
        if not self._workers:
            raise RuntimeError("no workers to route to")
        now = self.clock()
        cfg = self.config
        b = self.tree.window.bucket(now)
        if cfg.rebalance and now >= self._rebalance_after:
            self._rebalance_after = now + cfg.rebalance_interval_s
            self._rebalance(now, b)
        m = self.view.match(req.token_ids)
        n = len(req.token_ids)
        out = self._output_estimate(req.max_tokens, b)
        cached = m.cached_tokens
        assignment = self._assignment(m, now)
        if assignment is not None:
            cands, branch = list(assignment.workers), assignment.reason
        else:
            cands = [w for w, k in m.held.items() if k == cached and w in self._workers]
            branch = "exploit"
            if not cands or cached <= cfg.exploit_ratio * (n - cached):
                cands, branch = list(self._workers), "explore"
        path_nodes = set(m.path)
        if m.partial is not None:
            path_nodes.add(m.partial)
        costs = {w: self._cost(w, self._load(w, b), m, n, out, path_nodes, b) for w in cands}
        if branch == "explore" and cfg.pd_balance:
            heavy = [w for w in cands if self._decode_heavy(w, b)]
            if heavy and len(heavy) < len(cands):
                cands, branch = heavy, "pd"
        worker = min(cands, key=lambda w: (costs[w], self._workers[w].order))
        self._commit(req, worker, m, n, out, now)
        return RouteDecision(worker, branch, m.held.get(worker, 0), costs)

    def _cost(self, w: str, load: float, m: TreeMatch, n: int, out: int, path_nodes: set,
              b: int) -> float:
        """L + M + P of sending this request to worker `w`."""
        held = m.held.get(w, 0)
        ps = self.config.page_size
        need = -(-(n - held) // ps) + -(-out // ps)
        return load + self._eviction_cost(w, need, path_nodes, b) + self.cost.prefill_time(n - held, held)

    def load_of(self, worker_id: str) -> float:
        """L of a worker now, in GPU seconds (for operators; 0 for unknown workers)."""
        if worker_id not in self._workers:
            return 0.0
        return self._load(worker_id, self.tree.bucket())

    def _load(self, w: str, b: int) -> float:
        """L: windowed prefill seconds plus the seconds to decode what is outstanding."""
        return self.tree.load(w, b)[PREFILL_S] + self._decode_s(w)

    def _decode_s(self, w: str) -> float:
        """Decode seconds outstanding on `w`: each expected output token at an unloaded step's
        time (the paper's output x TPOT). Batching makes the GPU time smaller, yet every queued
        decode slows the others; a loaded TPOT instead would grow with the square of the queue
        and overreact to bursts."""
        ws = self._workers[w]
        if ws.outstanding <= 0:
            return 0.0
        step = self.cost.tpot(1, ws.outstanding_tokens // ws.outstanding)
        return self.cost.decode_time(ws.outstanding_output, step)

    def _eviction_cost(self, w: str, need_pages: int, path_nodes: set, b: int) -> float:
        """M: what recomputing the LRU nodes the worker must evict to fit `need_pages` costs."""
        ws = self._workers[w]
        rep = ws.report
        if rep is None:
            return 0.0  # capacity unknown: assume it fits
        free = rep.kv_total_pages - rep.kv_used_pages - ws.pages_since_report
        evict = min(need_pages - free, rep.kv_evictable_pages)
        if evict <= 0:
            return 0.0
        vic = self._victims(w, ws, evict, b)
        i = bisect_left(vic.pages, evict)
        if any(node in path_nodes for node in vic.nodes[:i + 1]):
            return self._eviction_cost_slow(w, evict, path_nodes, b)
        if i == len(vic.pages):  # fewer pages in its LRU than needed: all of them
            return vic.costs[-1] if vic.costs else 0.0
        before_pages = vic.pages[i - 1] if i else 0
        before_cost = vic.costs[i - 1] if i else 0.0
        return before_cost + self._node_cost(w, vic.nodes[i], evict - before_pages, b)

    def _victims(self, w: str, ws: _Worker, pages: int, b: int) -> _Victims:
        version = self.tree.lru_version(w)
        vic = ws.victims
        if vic is None or vic.version != version or vic.bucket != b:
            vic = ws.victims = _Victims(version, b, it=self.tree.lru(w))
        while not vic.done and (not vic.pages or vic.pages[-1] < pages):
            node = next(vic.it, None)
            if node is None:
                vic.done = True
                break
            vic.nodes.append(node)
            vic.pages.append((vic.pages[-1] if vic.pages else 0) + len(node.hashes))
            vic.costs.append((vic.costs[-1] if vic.costs else 0.0) +
                             self._node_cost(w, node, len(node.hashes), b))
        return vic

    def _eviction_cost_slow(self, w: str, evict: int, path_nodes: set, b: int) -> float:
        total = 0.0
        for node in self.tree.lru(w):
            if evict <= 0:
                break
            if node in path_nodes:
                continue
            take = min(evict, len(node.hashes))
            total += self._node_cost(w, node, take, b)
            evict -= take
        return total

    def _node_cost(self, w: str, node: Node, pages: int, b: int) -> float:
        """Recomputing the last `pages` pages of `node` for each request that used it on `w`."""
        hits = self.tree.stats(node, w, b)[REQUESTS]
        if hits <= 0:
            return 0.0
        tokens = pages * self.config.page_size
        return hits * self.cost.prefill_time(tokens, node.end - tokens)

    def _decode_heavy(self, w: str, b: int) -> bool:
        ws = self._workers[w]
        if ws.report is not None:
            return ws.report.hit_ratio >= self.config.pd_hit_ratio
        done, prompt, cached = ws.hits.totals(b)
        return done >= self.config.pd_min_requests and prompt > 0 and \
            cached / prompt >= self.config.pd_hit_ratio

    def _output_estimate(self, max_tokens: int, b: int) -> int:
        """Expected output tokens: the window's mean, capped by the request's budget."""
        done, tokens = self._outputs.totals(b)
        return max_tokens if done <= 0 else min(max_tokens, round(tokens / done))

    def _assignment(self, m: TreeMatch, now: float) -> Assignment | None:
        """The deepest live steering decision on the request's path."""
        for node in reversed(m.path):
            a = node.assigned
            if a is None:
                continue
            if a.until <= now:
                node.assigned = None
                continue
            live = tuple(w for w in a.workers if w in self._workers)
            if live:
                return Assignment(live, a.reason, a.until)
        return None

    def _commit(self, req: RouteRequest, w: str, m: TreeMatch, n: int, out: int, now: float) -> None:
        """Count the request as the worker's load and its prompt as held by the worker."""
        ws = self._workers[w]
        held = m.held.get(w, 0)
        path, holding = self.view.commit(m, w)
        if path:
            self._touch_top(ws, path[0])
        prefill = self.cost.prefill_time(n - held, held)
        end = path[-1] if path else self.tree.root
        self.tree.record(end, w, (1.0, prefill, float(out)))
        prefix = None
        if m.cached_tokens > 0:
            prefix = next((x for x in path if x.end == m.cached_tokens), None)
        ps = self.config.page_size
        ws.pages_since_report += -(-(n - held) // ps) + -(-out // ps)
        ws.outstanding += 1
        ws.outstanding_tokens += n
        ws.outstanding_output += out
        self._pending[req.request_id] = _Pending(w, now, end, prefix, n, prefill, out, holding)

    def _touch_top(self, ws: _Worker, node: Node) -> None:
        """Remember a top-level subtree the worker was sent work in: where rebalancing looks."""
        ws.tops[node] = None
        ws.tops.move_to_end(node)
        if len(ws.tops) > self.config.rebalance_tops:
            ws.tops.popitem(last=False)

    # ------------------------------------------------------------------ feedback

    def on_done(self, done: RequestDone) -> None:
        p = self._pending.pop(done.request_id, None)
        if p is None:
            return
        ws = self._workers.get(p.worker)
        if ws is None:
            return
        ws.outstanding -= 1
        ws.outstanding_tokens -= p.prompt_tokens
        ws.outstanding_output -= p.output_tokens
        now = self.clock()
        if not done.ok:  # it did not run to the end: take back its estimated work
            self.tree.record(p.path_end, p.worker, (0.0, -p.prefill_s, -float(p.output_tokens)), at=p.time)
            return
        prefill = self.cost.prefill_time(done.prompt_tokens - done.cached_tokens, done.cached_tokens)
        self.tree.record(p.path_end, p.worker, (0.0, prefill - p.prefill_s,
                                                float(done.output_tokens - p.output_tokens)), at=p.time)
        b = self.tree.bucket()
        ws.hits.add(b, (1.0, float(done.prompt_tokens), float(done.cached_tokens)))
        self._outputs.add(b, (1.0, float(done.output_tokens)))
        self.view.correct(p.worker, p.holding, done.cached_tokens)
        if p.prefix is not None and self.config.replicate:
            self.tree.record_ttft(p.prefix, p.worker, done.ttft)
            self._maybe_replicate(p.prefix, p.worker, now)

    # ------------------------------------------------------------------ rebalance and replicate

    def _rebalance(self, now: float, b: int) -> None:
        """Shift load from the heaviest to the lightest worker until within the ratio: move a
        subtree, or where the heavy worker's load is pinned by a prefix too hot to move, give
        that prefix the light worker as a replica (counted as taking half its load). The light
        worker pays for each shift by recomputing the prefix, which counts as its load."""
        cfg = self.config
        loads = {w: self._load(w, b) for w in self._workers}
        order = self._workers
        self._scan_left = cfg.rebalance_scan_nodes
        for _ in range(cfg.rebalance_max_moves):
            heavy = max(loads, key=lambda w: (loads[w], -order[w].order))
            light = min(loads, key=lambda w: (loads[w], order[w].order))
            if heavy == light or loads[heavy] < cfg.rebalance_min_load_s or \
                    loads[heavy] <= cfg.rebalance_ratio * loads[light]:
                return
            shift = self._pick_shift(heavy, light, loads[heavy] - loads[light], now, b)
            if shift is None:
                return
            if shift.replicate:
                self._replicate(shift.node, heavy, light, now)
            else:
                shift.node.assigned = Assignment((light,), "rebalance", now + cfg.assignment_ttl_s)
                self.tree.move_stats(shift.node, heavy, light)
            top = self.tree.top(shift.node)
            if top is not None:
                self._touch_top(self._workers[light], top)
            loads[heavy] -= shift.load
            loads[light] += shift.load + shift.recompute

    def _pick_shift(self, w: str, light: str, gap: float, now: float, b: int) -> _Shift | None:
        """What to shift from `w` to `light`, whose loads differ by `gap`, or None.

        A shift of load x whose prefix costs `light` c seconds to recompute must be worth it
        (x >= rebalance_min_gain * c) and must not overshoot (light ends below where w started).
        A move takes the largest subtree that lives on `w` alone (no other worker served it in
        the window) with 2x + c <= gap; replicated prefixes stay where they are. Subtrees are
        visited by decreasing load on `w`, so the first movable one is the largest, and a part
        is never worth more than its whole. If no move can close the gap within the moves
        allowed, the hottest prefix pinning `w` gets replicated (when replication is on): too
        large to move or shared, `light` neither holds it nor is assigned it, no too-large part
        below it, and x/2 + c <= gap. The search starts from the top-level subtrees `w` was most
        recently sent work in, not from every prefix in the tree, and weighs at most the check's
        budget of `rebalance_scan_nodes` subtrees."""
        cfg = self.config
        decode_s = self._decode_s(w)
        window_output = self.tree.load(w, b)[OUTPUT_TOKENS]
        seq = count()
        heap: list[tuple[float, int, Node]] = []

        def push(node: Node) -> None:
            """Queue the subtree by its part of L on `w`: its windowed prefill seconds plus its
            share (by windowed output tokens) of the worker's outstanding decode seconds."""
            sums = node.stats.get(w) if node.stats else None
            if sums is None or self._scan_left <= 0:
                return
            self._scan_left -= 1
            stats = sums.totals(b)
            if stats[REQUESTS] >= cfg.rebalance_min_requests:
                share = stats[OUTPUT_TOKENS] / window_output if window_output > 0 else 0.0
                heappush(heap, (-(stats[PREFILL_S] + share * decode_s), next(seq), node))

        tops = self._workers[w].tops
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
        big: set[Node] = set()  # too large to move
        while heap:
            neg, _, node = heappop(heap)
            x = -neg
            held = self.tree.held_prefix(node, light)
            c = self.cost.prefill_time(node.end - held, held)
            if x < cfg.rebalance_min_gain * c:
                continue
            a = node.assigned
            live = a if a is not None and a.until > now else None
            replicated = live is not None and live.reason == "replicate"
            if not replicated and 2 * x + c <= gap and \
                    not any(o != w and self.tree.stats(node, o, b)[REQUESTS] > 0 for o in node.stats):
                move = _Shift(node, False, x, c)
                break
            if 2 * x + c > gap:
                big.add(node)
            if cfg.replicate and (light not in live.workers if live else held < node.end) and \
                    x / 2 >= cfg.rebalance_min_gain * c and x / 2 + c <= gap:
                pinned.append(_Shift(node, True, x / 2, c))
            if not replicated:
                for child in node.children.values():
                    push(child)
        # The hot prefix is the most specific one: a shared ancestor (a system prompt above many
        # tools) pins nothing that its too-large descendants do not.
        hot = max((s for s in pinned if not any(ch in big for ch in s.node.children.values())),
                  key=lambda s: s.load, default=None)
        if move is not None and (hot is None or move.load * cfg.rebalance_max_moves >= gap / 2):
            return move
        return hot

    def _replicate(self, node: Node, w: str, extra: str, now: float) -> None:
        """Steer `node`'s requests to its current workers (or holders, with `w`) plus `extra`."""
        a = node.assigned
        current = list(a.workers) if a is not None and a.until > now else self.tree.holders(node)
        current = [x for x in dict.fromkeys(current + [w]) if x in self._workers and x != extra]
        node.assigned = Assignment(tuple(current + [extra]), "replicate",
                                   now + self.config.assignment_ttl_s)

    def _maybe_replicate(self, node: Node, w: str, now: float) -> None:
        """If this prefix's TTFT on `w` doubled across the window, give it one more worker."""
        cfg = self.config
        (n_old, s_old), (n_new, s_new) = self.tree.ttft_halves(node, w)
        if n_old < cfg.replicate_min_samples or n_new < cfg.replicate_min_samples or s_old <= 0:
            return
        if s_new / n_new < cfg.replicate_ttft_ratio * (s_old / n_old):
            return
        a = node.assigned
        current = list(a.workers) if a is not None and a.until > now else self.tree.holders(node)
        others = [x for x in self._workers if x not in current and x != w]
        if not others:
            return
        b = self.tree.window.bucket(now)
        self._replicate(node, w, min(others, key=lambda x: (self._load(x, b), self._workers[x].order)), now)
        self.tree.reset_ttft(node, w)
