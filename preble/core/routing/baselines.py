"""Baseline policies E2 is measured against. None reads KV events or load reports: each keeps
only what it routed, as the routers they stand for do."""

from __future__ import annotations

import hashlib
import random
from array import array
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ..kv_events import KVEvent, PagesStored
from ..messages import LoadReport
from .approx_tree import ApproxTree
from .base import Described, RequestDone, RouteDecision, RouteRequest


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class _Baseline(Described):
    """Worker membership in a stable order and the requests routed and not yet done."""

    name = "baseline"

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.workers: list[str] = []  # in the order they were added
        self.requests: dict[str, int] = {}  # worker -> outstanding requests
        self.tokens: dict[str, int] = {}  # worker -> outstanding prompt + max_tokens
        self._routed: dict[str, tuple[str, int]] = {}  # request id -> (worker, tokens)

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self.requests:
            self.workers.append(worker_id)
            self.requests[worker_id] = 0
            self.tokens[worker_id] = 0

    def remove_worker(self, worker_id: str) -> None:
        if worker_id in self.requests:
            self.workers.remove(worker_id)
            del self.requests[worker_id], self.tokens[worker_id]

    def on_kv_event(self, worker_id: str, event: KVEvent) -> None:
        """Baselines do not read the workers' caches."""

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        """Baselines do not read the workers' caches."""

    def on_load(self, report: LoadReport) -> None:
        """Baselines count their own outstanding requests instead."""

    def on_done(self, done: RequestDone) -> None:
        worker, tokens = self._routed.pop(done.request_id, (None, 0))
        if worker in self.requests:
            self.requests[worker] -= 1
            self.tokens[worker] -= tokens

    def _require_workers(self) -> None:
        if not self.workers:
            raise RuntimeError("no workers to route to")

    def _assign(self, req: RouteRequest, worker: str, branch: str, matched: int = 0) -> RouteDecision:
        tokens = len(req.token_ids) + req.max_tokens
        self._routed[req.request_id] = (worker, tokens)
        self.requests[worker] += 1
        self.tokens[worker] += tokens
        return RouteDecision(worker, branch, matched)


class RoundRobin(_Baseline):
    """Each worker in turn, in the order they were added; removals keep the rotation's place."""

    name = "round_robin"

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self._next = 0  # index of the next worker in `workers`

    def remove_worker(self, worker_id: str) -> None:
        if worker_id in self.requests and self.workers.index(worker_id) < self._next:
            self._next -= 1
        super().remove_worker(worker_id)

    def route(self, req: RouteRequest) -> RouteDecision:
        self._require_workers()
        if self._next >= len(self.workers):
            self._next = 0
        worker = self.workers[self._next]
        self._next += 1
        return self._assign(req, worker, self.name)


class LeastLoad(_Baseline):
    """The worker with the fewest outstanding tokens (prompt + max_tokens of unfinished requests)."""

    name = "least_load"

    def route(self, req: RouteRequest) -> RouteDecision:
        self._require_workers()
        return self._assign(req, min(self.workers, key=self.tokens.__getitem__), self.name)


class PowerOfTwo(_Baseline):
    """Two distinct random workers (seeded); the one with fewer outstanding tokens wins."""

    name = "power_of_two"

    def __init__(self, clock: Callable[[], float], seed: int = 0) -> None:
        super().__init__(clock)
        self.rng = random.Random(seed)

    def route(self, req: RouteRequest) -> RouteDecision:
        self._require_workers()
        if len(self.workers) == 1:
            return self._assign(req, self.workers[0], self.name)
        a, b = self.rng.sample(self.workers, 2)
        return self._assign(req, b if self.tokens[b] < self.tokens[a] else a, self.name)


class CacheAwareBranch(StrEnum):
    """Which of `CacheAware`'s rules chose the worker (the other baselines' branch is their name)."""

    IMBALANCED = "imbalanced"  # outstanding requests are imbalanced: the least loaded worker
    CACHE_HIT = "cache_hit"  # the best-matching worker, its match rate above the threshold
    CACHE_MISS = "cache_miss"  # no worker matches enough: the least loaded worker


@dataclass(frozen=True)
class CacheAwareConfig:
    cache_threshold: float = 0.3  # prefix match rate above which the best-matching worker wins
    balance_abs_threshold: int = 64  # imbalanced when max - min outstanding requests exceeds this ...
    balance_rel_threshold: float = 1.5  # ... and max exceeds this times min
    max_tree_tokens: int = 1 << 21  # per-worker cap of the approximate tree; least recently used beyond


class CacheAware(_Baseline):
    """SGLang router's cache_aware policy (sgl-model-gateway), over token ids: when outstanding
    requests are imbalanced, the least loaded worker ("imbalanced"); else the worker whose
    routed-prefix match rate exceeds the threshold ("cache_hit"); else the least loaded
    ("cache_miss"). Every routed prompt is recorded in its approximate tree."""

    name = "cache_aware"

    def __init__(self, clock: Callable[[], float], config: CacheAwareConfig | None = None) -> None:
        super().__init__(clock)
        self.config = config or CacheAwareConfig()
        self.tree = ApproxTree(self.config.max_tree_tokens)

    def remove_worker(self, worker_id: str) -> None:
        super().remove_worker(worker_id)
        self.tree.remove_worker(worker_id)

    def route(self, req: RouteRequest) -> RouteDecision:
        self._require_workers()
        cfg = self.config
        loads = self.requests
        least = min(self.workers, key=loads.__getitem__)
        hi, lo = max(loads.values()), loads[least]
        matched, worker = 0, None
        if hi - lo > cfg.balance_abs_threshold and hi > cfg.balance_rel_threshold * lo:
            worker, branch = least, CacheAwareBranch.IMBALANCED
        else:
            matched, best = self.tree.match(req.token_ids)
            rate = matched / len(req.token_ids) if req.token_ids else 0.0
            if best in loads and rate > cfg.cache_threshold:
                worker, branch = best, CacheAwareBranch.CACHE_HIT
            else:
                worker, branch, matched = least, CacheAwareBranch.CACHE_MISS, 0
        self.tree.insert(req.token_ids, worker, self.clock())
        return self._assign(req, worker, branch, matched)


@dataclass(frozen=True)
class PrefixHashConfig:
    prefix_tokens: int = 256  # K: the first K tokens pick the worker
    virtual_nodes: int = 160  # points per worker on the hash ring: keys spread evenly, ~1/N move on a change


class PrefixHash(_Baseline):
    """Consistent hashing of the prompt's first K tokens on a ring with virtual nodes."""

    name = "prefix_hash"

    def __init__(self, clock: Callable[[], float], config: PrefixHashConfig | None = None) -> None:
        super().__init__(clock)
        self.config = config or PrefixHashConfig()
        self._ring: list[tuple[int, str]] = []
        self._points: list[int] = []

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self.requests:
            super().add_worker(worker_id)
            self._ring += [(_hash64(f"{worker_id}#{i}".encode()), worker_id)
                           for i in range(self.config.virtual_nodes)]
            self._ring.sort()
            self._points = [p for p, _ in self._ring]

    def remove_worker(self, worker_id: str) -> None:
        super().remove_worker(worker_id)
        self._ring = [(p, w) for p, w in self._ring if w != worker_id]
        self._points = [p for p, _ in self._ring]

    def worker_for(self, token_ids: list[int]) -> str:
        key = _hash64(array("q", token_ids[:self.config.prefix_tokens]).tobytes())
        i = bisect_right(self._points, key) % len(self._points)
        return self._ring[i][1]

    def route(self, req: RouteRequest) -> RouteDecision:
        self._require_workers()
        return self._assign(req, self.worker_for(req.token_ids), self.name)
