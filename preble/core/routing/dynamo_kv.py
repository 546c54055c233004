"""NVIDIA Dynamo's KV router ("--router-mode kv") as a peer policy.

Source: github.com/ai-dynamo/dynamo (Apache-2.0), read file by file at these commits:
  lib/llm/src/kv_router/scheduler.rs     db19bd2a659d4cb04998fb4101cd0dbfbbeba9d4  selector, sampling, ties
  lib/llm/src/kv_router/queue.rs         db19bd2a659d4cb04998fb4101cd0dbfbbeba9d4  router queue
  lib/kv-router/src/config.rs            870abbd1e540664f8738c867c2b702e1d1ce629b  KvRouterConfig defaults
  lib/kv-router/src/sequence.rs          2fe8ae098288fa231f36125d0844b3d5a6f333aa  ActiveSequences
  lib/kv-router/src/multi_worker_sequence.rs  4c1de2a6ed91d50be6ed271654fe833c953787d8  per-worker loads
  lib/kv-router/src/radix_tree.rs        4276866e1eeba4fa8d3c340fb6fcea25a6a75516  overlap scores, tree sizes
and the "Router Design" page of the Dynamo docs (docs.nvidia.com/dynamo, v0.9 to v1.6).

The rule. For every worker w, with the prompt's `isl` tokens and block size B (our page size):
  cost(w) = overlap_score_weight * prefill_blocks(w) + decode_blocks(w)
  prefill_blocks(w) = (pending(w) + isl - B * overlap(w)) / B    (a fraction, not rounded)
  decode_blocks(w)  = distinct prompt pages of w's active requests, this prompt's included
- overlap(w): the prompt's full pages w holds contiguously from the root, from its KV events.
- pending(w): the uncached prompt tokens of requests routed to w whose prefill is not over. The
  docs' formula leaves it out; the code adds it.
- Active requests are the router's own bookkeeping, not engine metrics: a routed request adds the
  chained hashes of its prompt's full pages (shared pages count once per worker) until it
  finishes. Generated tokens are not counted (router_track_output_blocks is off by default).
  Requests still active after a whole expiry period are dropped, checked lazily when a request is
  added to that worker.
- Temperature 0 (the default): the least cost. Among equal costs, the smallest "tree size" wins,
  and a random one among those. The tree size is the pages the worker holds in the indexer, but
  the indexer fills it in only for workers that match the prompt's first page, so the others
  count as 0.
- Temperature T > 0: sample with probability proportional to exp(-(cost - min) / ((max - min) * T)),
  uniform when all costs are equal, by one uniform draw against the running sum in worker order.
- With overlap_score_weight 0 the router does not read KV events at all.

Deliberate deviations:
- Token ids and our chained page hashes stand in for Dynamo's hashes of token blocks, and the
  project's `GlobalTree` stands in for its radix tree. They count overlap the same way.
- Dynamo ends a request's pending prefill at its first streamed token. Our shell reports only
  `on_done`, so each `LoadReport` stands in: a worker with `waiting` queued requests keeps at most
  its `waiting` most recently routed pending requests and the older ones count as prefilled. The
  count is exact, but which requests remain is a guess when the engine does not admit in order. A
  prompt admitted but still in chunked prefill, or routed while the report was in flight, counts
  as done too early.
- No router queue (router_queue_threshold): `route()` must answer at once. This matches the
  threshold being unset, the default at 870abbd1; other versions default to 2.0 or 4.0.
- Ties and sampling draw from a seeded `random.Random`; Dynamo uses an unseeded generator and hash
  map order. Sampling walks workers in the order they were added.
- Only what a single router at default settings uses: no data-parallel ranks, LoRA, per-request
  overrides, replica sync (router_replica_sync is off by default), output-block tracking or the
  approximate mode without KV events.
- A KV event the tree cannot apply is skipped, as Dynamo's indexer logs and skips it. A removal
  that names an unknown page is skipped whole, where Dynamo still removes the pages it knows.
- The tree's collector frees a few unheld nodes per decision (the project's memory bound).
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..global_tree import EventGap, GlobalTree, PageSizeMismatch
from ..kv_events import KVEvent, PagesStored
from ..messages import LoadReport
from .base import HeldPagesDescribed, RequestDone, RouteDecision, RouteRequest


@dataclass(frozen=True)
class DynamoKVConfig:
    page_size: int = 16  # Dynamo's kv block size (--kv-cache-block-size): set to the workers' page size
    overlap_score_weight: float = 1.0  # KvRouterConfig::default().overlap_score_weight
    temperature: float = 0.0  # KvRouterConfig::default().router_temperature: 0 picks the least cost
    stale_request_s: float = 300.0  # EXPIRY_DURATION in sequence.rs: drop requests left active this long
    seed: int = 0  # not in Dynamo (unseeded): seeds tie-breaks and sampling so runs repeat
    gc_budget: int = 64  # not in Dynamo: unheld tree nodes the collector examines per decision

    def __post_init__(self) -> None:
        if self.overlap_score_weight < 0 or self.temperature < 0:
            raise ValueError("overlap_score_weight and temperature must be >= 0 (as Dynamo validates)")


def page_keys(tokens: list[int], page_size: int) -> list[int]:
    """Chained keys of the prompt's full pages. Equal keys at position i mean equal first i + 1
    pages, as with Dynamo's sequence hashes. Python's tuple hash is deterministic for ints."""
    keys, key = [], 0
    for start in range(0, len(tokens) - page_size + 1, page_size):
        key = hash((key, *tokens[start:start + page_size]))
        keys.append(key)
    return keys


@dataclass
class _Active:
    """One worker's routed requests as the router counts them (Dynamo's ActiveSequences)."""

    expire_at: float  # the next lazy expiry check
    pages: dict[int, int] = field(default_factory=dict)  # page key -> active requests using it
    keys: dict[str, list[int]] = field(default_factory=dict)  # request id -> its page keys
    pending: OrderedDict[str, int] = field(default_factory=OrderedDict)  # id -> uncached tokens, routing order
    pending_tokens: int = 0
    expiring: set[str] = field(default_factory=set)  # requests active at the last expiry check

    def shared_pages(self, keys: list[int]) -> int:
        """Leading pages of `keys` that active requests already use. With chained keys those form
        a prefix of the prompt, so a binary search finds the count."""
        pages = self.pages
        if not keys or keys[0] not in pages:
            return 0
        lo, hi = 1, len(keys)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if keys[mid - 1] in pages:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def add(self, request_id: str, keys: list[int], uncached: int) -> None:
        self.keys[request_id] = keys
        for k in keys:
            self.pages[k] = self.pages.get(k, 0) + 1
        self.pending[request_id] = uncached
        self.pending_tokens += uncached

    def prefilled(self, request_id: str) -> None:
        self.pending_tokens -= self.pending.pop(request_id, 0)

    def free(self, request_id: str) -> None:
        self.prefilled(request_id)
        self.expiring.discard(request_id)
        for k in self.keys.pop(request_id, ()):
            n = self.pages[k] - 1
            if n:
                self.pages[k] = n
            else:
                del self.pages[k]


class DynamoKV(HeldPagesDescribed):
    """Dynamo's KV router: per worker, weighted prefill blocks plus decode blocks; the least
    cost wins, or a softmax sample above temperature 0 (the rules: module docstring)."""

    name = "dynamo_kv"

    def __init__(self, clock: Callable[[], float], config: DynamoKVConfig | None = None) -> None:
        self.clock = clock
        self.config = config or DynamoKVConfig()
        self.tree = GlobalTree(self.config.page_size, clock)
        self.rng = random.Random(self.config.seed)
        self._workers: dict[str, _Active] = {}  # in the order they were added
        self._routed: dict[str, str] = {}  # active request id -> its worker

    # ------------------------------------------------------------------ membership and feeds

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self._workers:
            self._workers[worker_id] = _Active(self.clock() + self.config.stale_request_s)

    def remove_worker(self, worker_id: str) -> None:
        act = self._workers.pop(worker_id, None)
        if act is not None:
            for rid in act.keys:
                del self._routed[rid]
        self.tree.remove_worker(worker_id)

    def on_kv_event(self, worker_id: str, event: KVEvent) -> None:
        """Mirror the worker's cache. Skipped when overlap is not weighed, as Dynamo then does
        not subscribe to KV events."""
        if worker_id in self._workers and self.config.overlap_score_weight > 0:
            try:
                self.tree.apply(worker_id, event)
            except (EventGap, PageSizeMismatch):
                pass  # Dynamo's indexer logs and skips an event it cannot apply

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        if worker_id in self._workers and self.config.overlap_score_weight > 0:
            try:
                self.tree.replace_worker(worker_id, stored)
            except (EventGap, PageSizeMismatch):
                pass  # keep what the dump had before the page that could not be applied

    def on_load(self, report: LoadReport) -> None:
        """At most `waiting` requests can still wait for prefill: the most recently routed ones
        stay pending and the others count as prefilled (Dynamo learns it at the first token)."""
        act = self._workers.get(report.worker_id)
        if act is not None:
            while len(act.pending) > report.waiting:
                act.prefilled(next(iter(act.pending)))

    def on_done(self, done: RequestDone) -> None:
        worker = self._routed.pop(done.request_id, None)
        if worker is not None:
            self._workers[worker].free(done.request_id)

    # ------------------------------------------------------------------ routing

    def route(self, req: RouteRequest) -> RouteDecision:
        if not self._workers:
            raise RuntimeError("no workers to route to")
        tokens = req.token_ids
        if not tokens:
            raise ValueError("Dynamo's selector requires a non-empty prompt")
        cfg = self.config
        ps = cfg.page_size
        held = self.tree.match(tokens).held if cfg.overlap_score_weight > 0 else {}
        keys = page_keys(tokens, ps)
        costs = {}
        for w, act in self._workers.items():
            prefill_blocks = (act.pending_tokens + len(tokens) - held.get(w, 0)) / ps
            decode_blocks = len(act.pages) + len(keys) - act.shared_pages(keys)
            costs[w] = cfg.overlap_score_weight * prefill_blocks + decode_blocks
        worker = self._sample(costs) if cfg.temperature > 0 else self._least(costs, held)
        cached = held.get(worker, 0)
        self._book(req.request_id, worker, keys, len(tokens) - cached)
        self.tree.gc(cfg.gc_budget)
        return RouteDecision(worker, self.name, cached, costs)

    def _least(self, costs: dict[str, float], held: dict[str, int]) -> str:
        """The least cost; ties go to the smallest tree size (0 for workers not matching the first
        page), then to a random one of those."""
        best = min(costs.values())
        tied = [w for w, c in costs.items() if c == best]
        if len(tied) > 1:
            sizes = {w: self.tree.held_pages(w) if held.get(w) else 0 for w in tied}
            least = min(sizes.values())
            tied = [w for w in tied if sizes[w] == least]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)

    def _sample(self, costs: dict[str, float]) -> str:
        """Softmax over the negated costs, rescaled to [0, 1] by their range, at the temperature."""
        lo, hi = min(costs.values()), max(costs.values())
        scale = (hi - lo) * self.config.temperature
        weights = [1.0 if hi == lo else math.exp((lo - c) / scale) for c in costs.values()]
        draw, total, acc = self.rng.random(), sum(weights), 0.0
        for w, weight in zip(costs, weights):
            acc += weight / total
            if draw <= acc:
                return w
        return w

    def _book(self, request_id: str, worker: str, keys: list[int], uncached: int) -> None:
        """Count the request on its worker, first dropping the requests that were already active
        at the previous expiry check once a period has passed (Dynamo's lazy force_expiry). An id
        already active is not booked twice."""
        if request_id in self._routed:
            return
        act = self._workers[worker]
        now = self.clock()
        if now >= act.expire_at:
            for rid in list(act.expiring):
                act.free(rid)
                del self._routed[rid]
            act.expire_at = now + self.config.stale_request_s
            act.expiring = set(act.keys)
        act.add(request_id, keys, uncached)
        self._routed[request_id] = worker
