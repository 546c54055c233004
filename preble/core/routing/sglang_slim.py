"""The cache-aware rule of SGLang's slim router (experimental/sgl-router) as a peer policy.

Source: sgl-project/sglang, experimental/sgl-router: the router its first PR (#25323, 2026-05)
calls a slim, KV-aware router meant to replace the model gateway for routing-only deployments.
Read at these commits:
  src/policies/cache_aware.rs        2f02ae2314ef55051d0abdc0d79851787e2c6396  gate, bound, seed order
  src/policies/admission.rs          0939ce079ff48ef530bcc0dda49fd20d7894298e  resolve_cache_candidates,
      the pressure guard, prefill pressure order
  src/policies/power_of_two.rs       0939ce079ff48ef530bcc0dda49fd20d7894298e  the miss fallback
  src/policies/prefix_provider.rs    232b5c525b8875ce6f625a98408da4fd5eefc13a  local KV-event tree match
  src/policies/kv_events/hash.rs     36fdf39c8e8c8877b29a8aef54084245802ef951  query blocks
  src/policies_reorg/cache_aware.rs  03473357af1142c0480b1220300b45a1e18d3b71  the refactor (PR #40366,
      2026-09-19), same rules
and AffinityConfig::default in src/config/types.rs (the index's stored copy names no commit).

The rule, for a prompt of n tokens with page size B, from the workers' KV events:
- A worker's matched tokens are n x (its cached pages of the prompt, contiguous from the first) /
  ceil(n / B). It is a candidate with at least 1,024 of them (and, when set, a minimum share).
- Candidates are ranked by matched tokens, then lower prefill pressure, then worker id, and only
  min(pool, 32, max(8, ceil(0.05 x pool))) of them are kept.
- The one with the least uncached work (n - matched; the first such in rank order) starts as the
  winner. Each other candidate within 1,024 uncached tokens of that floor, in rank order, takes
  over if the pressure guard says the winner is materially more pressured (its waiting uncached
  tokens exceed the other's by more than 1,024 and by more than 1.5x); if the guard says the
  reverse, the winner stays; otherwise less uncached work, then lower pressure, then id decides.
  The guard runs only when every kept candidate has a load sample.
- Prefill pressure orders workers by (waiting uncached tokens, waiting requests, running
  requests) from their load samples, then by the router's own in-flight count; when a sample is
  missing, by the in-flight count alone.
- No candidate: power of two. Two distinct workers drawn uniformly, the lower pressure wins, the
  first drawn on ties.
Not modelled because off by default: the queue gate (worker_queue_limit) and saturation pin,
queue-time pressure (pressure_abs_threshold_ms), the remote KV indexer, buckets and sessions.

Deliberate deviations:
- The project's `GlobalTree`, fed by the workers' KV events, stands in for the router's local
  radix tree; the page size is configured, where the router learns it from the first events.
- Our load reports carry the prompt tokens of queued requests, not only their uncached part, and
  every report counts as fresh. The router's hard admission (running-request and KV capacity) is
  not applied: our reports carry no running cap, and the router admits any worker it has no
  capacity sample for.
- The power-of-two draw is seeded (the router uses a thread RNG).
- A KV event the tree cannot apply is skipped.
- The tree's collector frees a few unheld nodes per decision (the project's memory bound).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ..global_tree import EventGap, GlobalTree, PageSizeMismatch
from ..kv_events import KVEvent, PagesStored
from ..messages import LoadReport
from .base import HeldPagesDescribed, RequestDone, RouteDecision, RouteRequest


class SGLangSlimBranch(StrEnum):
    """Which part of the slim router's rule chose the worker (module docstring)."""

    CACHE_CANDIDATE = "cache_candidate"  # the tournament among the cache candidates
    POWER_OF_TWO = "power_of_two"  # no candidate: power of two


@dataclass(frozen=True)
class SGLangSlimConfig:
    page_size: int = 16  # SGLang's default page size; the router learns it from KV events
    min_matched_tokens: int = 1024  # cache_affinity_min_matched_tokens: fewer cached tokens is no candidate
    min_match_ratio: float | None = None  # cache_affinity_min_match_ratio: unset by default
    candidate_min_workers: int = 8  # cache_candidate_min_workers: candidates kept at least ...
    candidate_ratio: float = 0.05  # cache_candidate_ratio: ... or this share of the pool ...
    candidate_max_workers: int = 32  # cache_candidate_max_workers: ... but never more than this
    switch_margin_tokens: int = 1024  # cache_switch_margin_tokens: uncached work within this is a near tie
    pressure_guard: bool = True  # pressure_guard: near ties yield to a materially less pressured worker
    pressure_abs_tokens: int = 1024  # pressure_abs_threshold_tokens: "materially" is more waiting tokens ...
    pressure_rel: float = 1.5  # pressure_rel_threshold: ... and more than this many times as many
    seed: int = 0  # not in the router (thread RNG): seeds the power-of-two draw
    gc_budget: int = 64  # not in the router: unheld tree nodes the collector examines per decision


class SGLangSlim(HeldPagesDescribed):
    """The slim router's cache-aware selection: least uncached work among prefix holders with a
    pressure guard, power of two on a miss (module docstring)."""

    name = "sglang_slim"

    def __init__(self, clock: Callable[[], float], config: SGLangSlimConfig | None = None) -> None:
        self.clock = clock
        self.config = config or SGLangSlimConfig()
        self.tree = GlobalTree(self.config.page_size, clock)
        self.rng = random.Random(self.config.seed)
        self.active: dict[str, int] = {}  # worker -> in-flight requests, in the order workers were added
        self.reports: dict[str, LoadReport] = {}  # worker -> its latest load report
        self._routed: dict[str, str] = {}  # in-flight request id -> its worker

    # ------------------------------------------------------------------ membership and feeds

    def add_worker(self, worker_id: str) -> None:
        self.active.setdefault(worker_id, 0)

    def remove_worker(self, worker_id: str) -> None:
        if self.active.pop(worker_id, None) is not None:
            self.reports.pop(worker_id, None)
            self._routed = {r: w for r, w in self._routed.items() if w != worker_id}
            self.tree.remove_worker(worker_id)

    def on_kv_event(self, worker_id: str, event: KVEvent) -> None:
        if worker_id in self.active:
            try:
                self.tree.apply(worker_id, event)
            except (EventGap, PageSizeMismatch):
                pass  # an event the tree cannot apply is skipped

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        if worker_id in self.active:
            try:
                self.tree.replace_worker(worker_id, stored)
            except (EventGap, PageSizeMismatch):
                pass  # keep what the dump had before the page that could not be applied

    def on_load(self, report: LoadReport) -> None:
        if report.worker_id in self.active:
            self.reports[report.worker_id] = report

    def on_done(self, done: RequestDone) -> None:
        worker = self._routed.pop(done.request_id, None)
        if worker is not None:
            self.active[worker] -= 1

    # ------------------------------------------------------------------ routing

    def route(self, req: RouteRequest) -> RouteDecision:
        if not self.active:
            raise RuntimeError("no workers to route to")
        n = len(req.token_ids)
        matched = self.matched_tokens(req.token_ids)
        candidates = self._candidates(matched, n)
        if candidates:
            worker, branch = self._tournament(candidates, matched, n), SGLangSlimBranch.CACHE_CANDIDATE
        else:
            worker, branch = self._power_of_two(), SGLangSlimBranch.POWER_OF_TWO
        costs = {w: float(n - matched[w]) for w in candidates}
        if req.request_id not in self._routed:
            self._routed[req.request_id] = worker
            self.active[worker] += 1
        self.tree.gc(self.config.gc_budget)
        return RouteDecision(worker, branch, matched.get(worker, 0), costs)

    def matched_tokens(self, tokens: list[int]) -> dict[str, int]:
        """Worker -> the router's estimate of the prompt tokens it holds, for workers holding at
        least one page: the prompt's length times the share of its pages held."""
        ps = self.config.page_size
        pages = math.ceil(len(tokens) / ps)
        held = self.tree.match(tokens).held if pages else {}
        return {w: len(tokens) * (k // ps) // pages for w, k in held.items() if k and w in self.active}

    def _candidates(self, matched: dict[str, int], n: int) -> list[str]:
        """Workers passing the hit gate, ranked and bounded to the candidate count."""
        cfg = self.config
        passed = [w for w, m in matched.items() if m >= cfg.min_matched_tokens and
                  (cfg.min_match_ratio is None or (n > 0 and m / n >= cfg.min_match_ratio))]
        pool = len(self.active)
        limit = min(pool, cfg.candidate_max_workers,
                    max(cfg.candidate_min_workers, math.ceil(cfg.candidate_ratio * pool)))
        pressure = self._pressure_keys(passed)
        return sorted(passed, key=lambda w: (-matched[w], pressure[w], w))[:limit]

    def _tournament(self, candidates: list[str], matched: dict[str, int], n: int) -> str:
        """Least uncached work; a near tie may go to a materially less pressured candidate."""
        uncached = {w: n - matched[w] for w in candidates}
        pressure = self._pressure_keys(candidates)
        guarded = self.config.pressure_guard and all(w in self.reports for w in candidates)
        floor = min(candidates, key=uncached.__getitem__)
        ceiling = uncached[floor] + self.config.switch_margin_tokens
        winner = floor
        for w in candidates:
            if w == winner or uncached[w] > ceiling:
                continue
            if guarded and self._more_pressured(winner, w):
                winner = w
            elif guarded and self._more_pressured(w, winner):
                continue
            elif (uncached[w], pressure[w], w) < (uncached[winner], pressure[winner], winner):
                winner = w
        return winner

    def _more_pressured(self, a: str, b: str) -> bool:
        """a's waiting tokens exceed b's by more than the absolute and the relative margin."""
        wa, wb = self.reports[a].waiting_tokens, self.reports[b].waiting_tokens
        return wa - wb > self.config.pressure_abs_tokens and wa > wb * self.config.pressure_rel

    def _pressure_keys(self, workers: list[str]) -> dict[str, tuple[int, ...]]:
        """Prefill pressure, lower first: the load samples when all of `workers` have one, else
        the in-flight counts alone."""
        if all(w in self.reports for w in workers):
            return {w: (self.reports[w].waiting_tokens, self.reports[w].waiting, self.reports[w].running,
                        self.active[w]) for w in workers}
        return {w: (self.active[w],) for w in workers}

    def _power_of_two(self) -> str:
        """Two distinct workers drawn uniformly; the lower pressure wins, the first on ties."""
        workers = list(self.active)
        if len(workers) == 1:
            return workers[0]
        i = self.rng.randrange(len(workers))
        j = self.rng.randrange(len(workers) - 1)
        a, b = workers[i], workers[j + (j >= i)]
        pressure = self._pressure_keys([a, b])
        return b if pressure[a] > pressure[b] else a
