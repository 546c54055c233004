"""The default policy: send each request where it adds the least predicted latency.

For every worker w the router predicts, in seconds, what routing the request there costs all
requests, this one included (the greedy rule for the lowest mean latency):

- wait: the prefill work already queued on w (`LoadTable`, the router's fluid model of it);
- prefill: this request's prefill of the tokens w does not hold (the cost model's time), plus the
  decode step its running batch adds to each of the forward passes the prefill takes (chunked
  prefill shares passes with decodes);
- decode: its expected output tokens times w's decode step with it in the batch;
- interference: what it costs the other requests on w, which decode while it prefills (those
  queued ahead of it have started decoding by then): each waits for its prefill passes, and each
  of their steps grows by its share of the batch while it decodes;
- work: what its compute costs requests that arrive later and queue behind it. In an M/M/1 queue
  at utilisation u each second of work delays later arrivals by u / (1 - u) seconds in all; the
  policy charges one second per second (u = 0.5) rather than chase a utilisation it measures
  noisily. While every worker has a queue (a cold start, a burst), the requests that arrive before
  the shortest one drains must wait somewhere, and so wait behind the new work too: the shortest
  queue's seconds times the arrival rate per worker, over 1 - u (the backlog part). It breaks
  near-ties between waiting for a holder and recomputing elsewhere toward the choice that spends
  less GPU time, more firmly the more work is queued everywhere.

Cache reuse, load balance and replication all follow from that one sum. Where it cannot tell
workers apart (idle ones, for a prefix none holds) the least recently chosen wins, so new
prefixes, and the requests that will follow them, spread evenly. A worker that holds the
prefix wins by the prefill it saves, for this request and for those decoding there; when its queue
is longer than that saving, another worker recomputes the prefix, and then holds it too (a hot
prefix gains replicas as its queue demands, and loses them to LRU when it cools). A worker heavy
with decodes costs more per prefill (interference), so prefill-heavy requests drift to workers
with fewer decodes without a separate P/D rule. Nothing is windowed: the queue is the router's
own account, updated at each decision and bounded by the workers' load reports.

Priced alone, a request copies a prefix only once the holder's queue outgrows the copy's
prefill, though the copy also serves the prefix's later requests: with many workers and a few
long, popular documents, each stays on one worker while others idle. So an idle worker (nothing
routed to it) that lacks the prefix earns a copy credit: the prefix's requests in the tree's
window, shared among its holders and the copy, times how much cheaper the next one would be there
than at the cheapest holder (both priced by this same estimate), less the copy prefill's cost to
the worker's own traffic (its arrivals during the C seconds of prefill wait C/2 each). The window
is the tree's (`tree_window_s`); until it has run that long, rates use the time since the first
decision.

With `eviction` on, a worker whose cache is full is also charged what the pages the request
adds there evict: the prefill of the evicted pages times their predicted reuse there
(`eviction.py`), so a new prompt displaces pages nobody reuses before a hot prefix. It was tried
on the grids and is off, as is a backlog part read from each worker's own queue rather than the
fleet's shortest (`backlog_fleet` off; results/routing/README.md).

Seconds are the cost model's, scaled per worker to what its load reports show its passes really
take (`Calibration`): a profile of another GPU, or none, still prices each worker right. Each term
can be switched off for ablation; the cache view (KV events, or routed prompts for engines that
send none) is `CacheView`, shared with e2. Every worker is priced at once, over arrays: a
decision costs about as much with 64 workers as with 4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from ..cost_model import CostModel
from ..global_tree import Node, TreeMatch
from ..kv_events import KVEvent, PagesStored
from ..messages import LoadReport
from ..pages import DEFAULT_PAGE_SIZE
from ..scheduler_config import SchedulerConfig
from ..window_stats import ROUTER_WINDOW, WindowSpec, WindowSums
from .base import HotPrefixes, RequestDone, RouteDecision, RouteRequest, WorkerInfo
from .cache_view import CacheView, CacheViewConfig, Holding
from .calibration import Calibration, CalibrationConfig
from .eviction import VictimCurve
from .held_tokens import HeldTokens
from .worker_load import LoadTable, LoadView


class LatencyBranch(StrEnum):
    """How the chosen worker relates to the cache (`RouteDecision.branch`; see `_branch`)."""

    HIT = "hit"  # it holds the longest cached prefix
    PARTIAL = "partial"  # it holds less of it
    MISS = "miss"  # it holds none of the prompt


@dataclass(frozen=True)
class LatencyConfig:
    page_size: int = DEFAULT_PAGE_SIZE  # the workers' KV page size; the tree rejects events of another size
    pending_ttl_s: float = 30.0  # a routed prompt counts as held this long by a worker with live KV events
    routed_ttl_s: float = 300.0  # ... and this long by a worker that sends none (corrected by cached_tokens)
    tree_window_s: float = ROUTER_WINDOW.seconds  # tree nodes no worker holds are freed after this long unused
    gc_budget: int = 64  # tree nodes the collector examines per routing decision
    step_tokens: int = SchedulerConfig.max_num_batched_tokens  # a worker's tokens per pass until its load report says
    output_window_s: float = ROUTER_WINDOW.seconds  # expected output = the mean of requests finished in this window ...
    output_window_buckets: int = ROUTER_WINDOW.buckets  # ... kept in this many buckets (capped by the request's max_tokens)
    wait: bool = True  # terms of the prediction; off only for ablations
    decode: bool = True
    interference: bool = True
    cache_aware: bool = True  # off: every worker prices the whole prompt (no reuse) for ablations
    calibration: CalibrationConfig = CalibrationConfig()  # each worker's speed against the cost model
    work_weight: float = 1.0  # seconds of others' future waiting charged per second of compute added (see above)
    backlog: bool = True  # also charge the arrivals that queue behind the work while a backlog drains ...
    backlog_fleet: bool = True  # ... the fleet's shortest (what a later arrival waits anywhere); off: the worker's own
    copy_credit: bool = True  # credit idle workers for what a copy of the prefix saves its later requests
    eviction: bool = False  # charge what the pages a request adds to a full cache evict (`eviction.py`)
    min_rate_span_s: float = 1.0  # the shortest span the tree window's request counts are turned into rates over
    mask_cache_size: int = 4096  # tree slot masks whose workers are kept resolved (`HeldTokens`)

    def cache_view(self) -> CacheViewConfig:
        return CacheViewConfig(self.page_size, self.tree_window_s, self.output_window_buckets, self.pending_ttl_s,
                               self.routed_ttl_s, self.gc_budget)


@dataclass(frozen=True, slots=True)
class Estimate:
    """The predicted cost of one request on each worker, by term (seconds; arrays over the
    workers, rows of them where `held` has rows, or scalars for one)."""

    held: np.ndarray  # prompt tokens the worker holds
    wait: np.ndarray
    prefill: np.ndarray  # its passes, decode steps sharing them included
    decode: np.ndarray
    interference: np.ndarray
    work: np.ndarray
    copy_credit: np.ndarray | float = 0.0  # subtracted: what a copy on the worker saves later requests
    eviction: np.ndarray | float = 0.0  # what the pages it adds evict costs later requests

    @property
    def total(self) -> np.ndarray:
        return self.wait + self.prefill + self.decode + self.interference + self.work - self.copy_credit + \
            self.eviction

    def row(self, i: int) -> Estimate:
        """Row `i` of an estimate priced for several `held` rows at once (terms that do not depend
        on `held` are shared)."""
        return Estimate(*(t[i] if type(t) is np.ndarray and t.ndim == 2 else t for t in (
            self.held, self.wait, self.prefill, self.decode, self.interference, self.work, self.copy_credit,
            self.eviction)))


def estimate(cost: CostModel, view: LoadView, prompt: int, held: np.ndarray, output: int, config: LatencyConfig,
             prefill_scale: np.ndarray | float = 1.0, decode_scale: np.ndarray | float = 1.0,
             arrival_rate: float = 0.0) -> Estimate:
    """What routing a request (`prompt` tokens of which each worker holds `held`, `output`
    expected) to workers in state `view` costs, by term; each worker's prefill and decode times
    are the cost model's times its scales (`Calibration`). `arrival_rate`: requests per second
    per worker, for the backlog part of the work term."""
    new = prompt - held
    passes = -(-new // np.maximum(1, view.step_tokens))
    batch_step = decode_scale * cost.decode_step_times(view.batch, view.context)
    compute = prefill_scale * cost.prefill_times(new, held)
    context = prompt + output // 2  # its mean context while decoding
    with_it = decode_scale * cost.decode_step_times(view.batch + 1, view.context + context)
    interference = view.batch * (compute + output * (with_it - batch_step))
    return Estimate(held, view.queue_s if config.wait else 0.0, compute + passes * batch_step,
                    output * with_it if config.decode else 0.0, interference if config.interference else 0.0,
                    work_weight(config, view, arrival_rate) * compute)


def work_weight(config: LatencyConfig, view: LoadView, arrival_rate: float) -> np.ndarray | float:
    """Seconds of later requests' waiting per second of compute added to each worker. In steady
    state `config.work_weight`, the M/M/1 externality u / (1 - u) at the utilisation u it
    assumes (1: u = 0.5); with `backlog`, also the requests that arrive while the worker's
    present queue drains and so wait behind the new work: the queue's seconds times the arrival
    rate, over 1 - u = 1 / (1 + work_weight). With `backlog_fleet` the queue is the fleet's
    shortest: a later arrival that can go to a worker with less queued does not wait behind this
    work, so only what it must wait anywhere counts."""
    if not config.backlog:
        return config.work_weight
    backlog = np.min(view.queue_s) if config.backlog_fleet else view.queue_s
    return config.work_weight + (1.0 + config.work_weight) * arrival_rate * backlog


def copy_credit(total: np.ndarray, as_holder: np.ndarray, holders: np.ndarray, eligible: np.ndarray,
                requests: float, rate: np.ndarray, prefill: np.ndarray) -> np.ndarray:
    """Seconds credited to each eligible worker for making a copy of the prefix (module
    docstring): `requests` through it in the window, shared among the holders and the copy, times
    what the next would save there (`as_holder`: its total as if it held the prefix) against the
    cheapest holder's `total`; less its own arrivals' (`rate`) wait for the copy's `prefill`."""
    saving = np.maximum(0.0, total[holders].min() - as_holder)
    credit = np.maximum(0.0, requests / (holders.sum() + 1) * saving - rate * prefill ** 2 / 2)
    return np.where(eligible, credit, 0.0)


@dataclass(frozen=True, slots=True)
class _CopyCandidates:
    """The workers holding the cached prefix, those that may take a copy (idle, lacking it), and
    the prefix's requests in the tree's window ending with `bucket`."""

    holders: np.ndarray
    eligible: np.ndarray
    requests: float
    bucket: int


@dataclass(slots=True)
class _Pending:
    worker: str
    holding: Holding | None


class LatencyPolicy:
    name = "latency"

    def __init__(self, clock: Callable[[], float], cost_model: CostModel | None = None,
                 config: LatencyConfig | None = None) -> None:
        self.clock = clock
        self.cost = cost_model or CostModel()
        self.config = cfg = config or LatencyConfig()
        self.view = CacheView(cfg.cache_view(), clock)
        self.calibration = Calibration(self.cost, cfg.calibration)
        self.tree = self.view.tree
        self._loads = LoadTable(cfg.step_tokens)
        self._pending: dict[str, _Pending] = {}
        self._window = WindowSpec(cfg.output_window_s, cfg.output_window_buckets)
        self._outputs = WindowSums(cfg.output_window_buckets, 2)  # (finished requests, output tokens)
        self._arrivals = WindowSums(cfg.output_window_buckets, 1)  # decisions, for the backlog term's rate
        self._decisions = 0
        self._first_estimate: float | None = None  # the tree window's span until it has run that long
        self._held = HeldTokens(self.tree, cfg.mask_cache_size)
        self._victims: dict[str, VictimCurve] = {}  # each worker's eviction costs, while its LRU stands

    # ------------------------------------------------------------------ membership and feeds

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self._loads:
            self._loads.add_worker(worker_id)
            self.view.add_worker(worker_id)
            self._held.reset(self._loads.ids)

    def remove_worker(self, worker_id: str) -> None:
        if worker_id in self._loads:
            self._loads.remove_worker(worker_id)
            self._held.reset(self._loads.ids)
        self.view.remove_worker(worker_id)
        self.calibration.forget(worker_id)
        self._victims.pop(worker_id, None)
        for rid in [r for r, p in self._pending.items() if p.worker == worker_id]:
            del self._pending[rid]

    def on_kv_event(self, worker_id: str, event: KVEvent) -> None:
        self.view.on_kv_event(worker_id, event)

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        self.view.on_resync(worker_id, stored)

    def on_load(self, report: LoadReport) -> None:
        if report.worker_id in self._loads:
            now = self.clock()
            self._loads.on_report(report, now)
            self.view.check_report(report)
            self.calibration.on_report(report.worker_id, report.steps, now)
            self._loads.set_scales(report.worker_id, *self.calibration.scales(report.worker_id))

    def worker_info(self, worker_id: str) -> WorkerInfo:
        return self.view.worker_info(worker_id, self.load_of(worker_id) if worker_id in self._loads else None)

    def hot_prefixes(self, limit: int, scan_budget: int) -> HotPrefixes:
        return self.view.hot_prefixes(limit, scan_budget)

    def load_of(self, worker_id: str) -> float:
        """Seconds a request routed to the worker now would wait for its queue (0 if unknown)."""
        return self._loads.queue_s(worker_id, self.clock()) if worker_id in self._loads else 0.0

    # ------------------------------------------------------------------ routing

    def route(self, req: RouteRequest) -> RouteDecision:
        if not len(self._loads):
            raise RuntimeError("no workers to route to")
        now = self.clock()
        match = self.view.match(req.token_ids)
        output = self._expected_output(req.max_tokens, now)
        est = self.estimates(match, len(req.token_ids), output, now, decide=True)
        totals = est.total.tolist()
        i = self._pick(totals)
        worker, held = self._loads.ids[i], int(est.held[i])
        self._commit(req, i, match, held, float(est.prefill[i]), output, now)
        return RouteDecision(worker, _branch(match, held), held, dict(zip(self._loads.ids, totals)))

    def estimates(self, match: TreeMatch, prompt: int, output: int, now: float, decide: bool = False) -> Estimate:
        """Every worker's predicted cost of the request, by term (in `LoadTable.ids` order). With
        `decide`, the eviction term is priced only where it can change which worker is cheapest:
        a worker whose total without it already exceeds the cheapest found keeps 0 there."""
        loads, cfg = self._loads, self.config
        if self._first_estimate is None:
            self._first_estimate = now
        held = self._held(match) if cfg.cache_aware else np.zeros(len(loads))
        view = loads.view(now)
        copy = self._copy_candidates(match, held, view)
        rate = self._arrival_rate(now) if cfg.backlog else 0.0
        if copy is None:
            est = estimate(self.cost, view, prompt, held, output, cfg, loads.prefill_scale, loads.decode_scale, rate)
        else:  # priced in one pass as they are (row 0) and as if each held the cached prefix (row 1)
            both = estimate(self.cost, view, prompt, np.stack((held, np.full_like(held, match.cached_tokens))),
                            output, cfg, loads.prefill_scale, loads.decode_scale, rate)
            est, totals = both.row(0), both.total
            credit = self._copy_credit(copy, totals[0], totals[1], est.prefill, now)
            est = est if credit is None else replace(est, copy_credit=credit)
        if not cfg.eviction:
            return est
        return replace(est, eviction=self._eviction(match, held, prompt, est.total if decide else None))

    def _eviction(self, match: TreeMatch, held: np.ndarray, prompt: int, bound: np.ndarray | None) -> np.ndarray:
        """Per worker, what the pages the request would add there evict costs (`eviction.py`):
        pages beyond those free at its last load report, less those routed there since, come from
        its LRU end (no more than it could evict), never from the request's own prefix. Given the
        totals without it (`bound`), workers are priced cheapest first until the rest cannot win."""
        loads, tree = self._loads, self.tree
        evict = np.minimum(self._new_pages(prompt, held) - (loads.kv_free_pages - loads.pages_since_report),
                           loads.kv_evictable_pages)
        cost = np.zeros(len(loads))
        over = evict > 0
        if not over.any():
            return cost
        order = np.flatnonzero(over)
        best = np.inf
        if bound is not None:
            order = order[np.argsort(bound[order], kind="stable")]
            best = float(bound[~over].min()) if not over.all() else np.inf
        keep, bucket = set(match.path), tree.bucket()
        for i in order.tolist():
            if bound is not None and bound[i] > best:
                break
            worker, scale = loads.ids[i], float(loads.prefill_scale[i])
            curve = self._victims.get(worker)
            if curve is None or not curve.current(bucket, scale):
                curve = VictimCurve(tree, worker, bucket, self.config.page_size, self.cost, scale)
                self._victims[worker] = curve
            cost[i] = curve.evict(int(evict[i]), keep)
            if bound is not None:
                best = min(best, float(bound[i]) + cost[i])
        return cost

    def _new_pages(self, prompt: int, held: np.ndarray | int) -> np.ndarray | int:
        """KV pages a prompt takes on a worker holding `held` of its tokens."""
        return -(-(prompt - held) // self.config.page_size)

    def _copy_candidates(self, match: TreeMatch, held: np.ndarray, view: LoadView) -> _CopyCandidates | None:
        """Who may earn a copy credit, checked before any pricing; None where no one can (nothing
        cached, no idle worker lacking it, no requests through it in the window)."""
        cfg = self.config
        if not (cfg.copy_credit and cfg.cache_aware and match.cached_tokens and self._loads.idle):
            return None
        holders = held >= match.cached_tokens
        eligible = ~holders & (view.batch == 0)
        if not eligible.any():
            return None
        node = _deepest_cached(match)
        bucket = self.tree.bucket()
        requests = self.tree.requests_through(node, bucket) if node is not None else 0.0
        return _CopyCandidates(holders, eligible, requests, bucket) if requests > 0 else None

    def _copy_credit(self, copy: _CopyCandidates, total: np.ndarray, as_holder: np.ndarray, prefill: np.ndarray,
                     now: float) -> np.ndarray | None:
        """Each worker's copy credit (module docstring), None where no worker earns one."""
        loads, cfg = self._loads, self.config
        gaining = copy.eligible & (as_holder < total[copy.holders].min())  # the others' credit is 0 whatever their rate
        if not gaining.any():
            return None
        takers = np.flatnonzero(gaining)
        span = max(cfg.min_rate_span_s, min(now - self._first_estimate, cfg.tree_window_s))
        rate = np.zeros(len(loads))
        rate[takers] = self.tree.requests_on([loads.ids[i] for i in takers], copy.bucket)
        return copy_credit(total, as_holder, copy.holders, gaining, copy.requests, rate / span, prefill)

    def _arrival_rate(self, now: float) -> float:
        """Requests per second per worker over the output window (until it has run that long,
        since the first decision)."""
        cfg = self.config
        span = max(cfg.min_rate_span_s, min(now - self._first_estimate, cfg.output_window_s))
        return self._arrivals.totals(self._window.bucket(now))[0] / span / len(self._loads)

    def _pick(self, totals: list[float]) -> int:
        """The cheapest worker; among equals the least recently chosen, then the first added."""
        best = min(totals)
        if totals.count(best) == 1:
            return totals.index(best)
        last = self._loads.last_chosen
        return min((i for i, t in enumerate(totals) if t == best), key=last.__getitem__)

    def _commit(self, req: RouteRequest, i: int, match: TreeMatch, held: int, prefill_s: float, output: int,
                now: float) -> None:
        worker = self._loads.ids[i]
        path, holding = self.view.commit(match, worker)
        if path:  # per-prefix traffic: for operators (`hot_prefixes`) and the eviction term
            self.tree.record(path[-1], worker, (1.0, prefill_s, float(output)))
        new_pages = self._new_pages(len(req.token_ids), held) if self.config.eviction else 0  # read by it only
        self._loads.add(worker, req.request_id, prefill_s, len(req.token_ids) + output // 2, now, new_pages)
        self._decisions += 1
        self._loads.last_chosen[i] = self._decisions
        if self.config.backlog:
            self._arrivals.add(self._window.bucket(now), (1.0,))
        self._pending[req.request_id] = _Pending(worker, holding)

    def _expected_output(self, max_tokens: int, now: float) -> int:
        done, tokens = self._outputs.totals(self._window.bucket(now))
        return max_tokens if done <= 0 else min(max_tokens, round(tokens / done))

    # ------------------------------------------------------------------ feedback

    def on_done(self, done: RequestDone) -> None:
        p = self._pending.pop(done.request_id, None)
        if p is None:
            return
        self._loads.remove(done.request_id)
        if done.ok:
            self._outputs.add(self._window.bucket(self.clock()), (1.0, float(done.output_tokens)))
            self.view.correct(p.worker, p.holding, done.cached_tokens)


def _deepest_cached(match: TreeMatch) -> Node | None:
    """The deepest tree node inside the query's longest cached prefix (None: nothing cached)."""
    if not match.cached_tokens:
        return None
    return next((n for n in reversed(match.path) if n.end <= match.cached_tokens), None)  # the path is root first


def _branch(match: TreeMatch, held: int) -> LatencyBranch:
    """How the choice relates to the cache: HIT (holds the longest cached prefix), PARTIAL
    (holds less of it) or MISS (holds none of the prompt)."""
    if held and held >= match.cached_tokens:
        return LatencyBranch.HIT
    return LatencyBranch.PARTIAL if held else LatencyBranch.MISS
