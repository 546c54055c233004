"""The operator dashboard's data: replicas, the hottest prefixes, routing decisions, rates.

Plain functions over the router's state and one recorder with an injected clock. The router
serves them as JSON under `/dashboard/api/` (usable by scripts without the page) and the page
`/dashboard` renders them. Prompt text shows only as a short preview of each prefix's two ends
unless the operator turns full text on.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.percentile import percentile
from ..core.routing.base import RoutingPolicy
from .config import DashboardConfig


@dataclass
class _Bucket:
    start: float
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    seen: int = 0  # TTFTs offered to the sample


class Timeline:
    """Finished requests in fixed buckets over the last `span_s`: rate, hit ratio, TTFT."""

    def __init__(self, cfg: DashboardConfig, clock: Callable[[], float], seed: int = 0) -> None:
        self.cfg, self.clock = cfg, clock
        self._buckets: deque[_Bucket] = deque()
        self._rng = random.Random(seed)

    def record(self, ttft: float, prompt_tokens: int, cached_tokens: int, ok: bool) -> None:
        b = self._bucket(self.clock())
        b.requests += 1
        if not ok:
            b.errors += 1
            return
        b.prompt_tokens += prompt_tokens
        b.cached_tokens += cached_tokens
        b.seen += 1
        if len(b.ttfts) < self.cfg.samples_per_bucket:
            b.ttfts.append(ttft)
        else:  # reservoir sampling keeps a uniform sample of the bucket's TTFTs
            j = self._rng.randrange(b.seen)
            if j < len(b.ttfts):
                b.ttfts[j] = ttft

    def series(self) -> list[dict]:
        """Oldest first; the newest bucket is still filling (its rate counts its time so far)."""
        now = self.clock()
        self._expire(now)
        out = []
        for b in self._buckets:
            elapsed = min(self.cfg.bucket_s, max(now - b.start, 1e-9))
            ttfts = b.ttfts
            out.append({"t": b.start, "requests_per_s": b.requests / elapsed, "errors": b.errors,
                        "hit_ratio": b.cached_tokens / b.prompt_tokens if b.prompt_tokens else None,
                        "p50_ttft": percentile(ttfts, 50) if ttfts else None,
                        "p99_ttft": percentile(ttfts, 99) if ttfts else None})
        return out

    def _bucket(self, now: float) -> _Bucket:
        self._expire(now)
        start = math.floor(now / self.cfg.bucket_s) * self.cfg.bucket_s
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(_Bucket(start))
        return self._buckets[-1]

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0].start <= now - self.cfg.span_s - self.cfg.bucket_s:
            self._buckets.popleft()


def preview(tokens: list[int], decode: Callable[[list[int]], str], cfg: DashboardConfig) -> str:
    """A prefix as text: whole when the operator allows it, else its first and last few tokens."""
    k = cfg.preview_tokens
    if cfg.full_text or len(tokens) <= 2 * k:
        return decode(tokens)
    return f"{decode(tokens[:k])} … {decode(tokens[-k:])}"


def hot_prefixes(policy: RoutingPolicy, decode: Callable[[list[int]], str], cfg: DashboardConfig,
                 limit: int) -> dict:
    """The policy's most used prefixes in its window (policies with per-prefix statistics: e2,
    latency), with which replicas hold them and which are assigned to serve them."""
    hot = policy.hot_prefixes(min(limit, cfg.max_prefixes), cfg.prefix_scan_budget)
    return {"window_s": hot.window_s, "full_text": cfg.full_text,
            "prefixes": [{"tokens": len(p.tokens), "requests_in_window": p.requests_in_window,
                          "requests_per_s": p.requests_in_window / hot.window_s,
                          "held_by": p.held_by, "assigned_to": p.assigned_to, "assignment": p.assignment,
                          "replicas": len(set(p.held_by) | set(p.assigned_to)),
                          "preview": preview(p.tokens, decode, cfg)} for p in hot.prefixes]}


def replicas(pool, policy: RoutingPolicy) -> list[dict]:
    """Each worker: health, queue, KV usage, hit ratio, TPOT, and the policy's load and cached
    pages for it."""
    out = []
    for w in pool.workers.values():
        rep, info = w.load, policy.worker_info(w.worker_id)
        entry = {"worker_id": w.worker_id, "url": w.url, "healthy": w.healthy,
                 "running": None, "waiting": None, "kv_usage": None, "hit_ratio": None, "tpot": None,
                 "load_s": info.load_s if w.healthy else None, "cached_pages": info.cached_pages}
        if rep is not None:
            entry.update(running=rep.running, waiting=rep.waiting, hit_ratio=rep.hit_ratio, tpot=rep.tpot,
                         kv_usage=(rep.kv_used_pages - rep.kv_evictable_pages) / max(1, rep.kv_total_pages))
        out.append(entry)
    return out
