"""Sums over a sliding time window, kept in a ring of time buckets.

The router keeps many small windowed counters (per tree node and worker: requests, prefill
seconds, output tokens; per prefix: TTFT). A ring of buckets gives each one fixed memory whatever
the traffic, O(1) updates and expiry for free, exact to one bucket's width. Callers pass the bucket
id of "now" (`WindowSpec.bucket`), which must never go backwards.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowSpec:
    seconds: float  # the window's length
    buckets: int  # how many buckets it is cut into (its resolution is seconds / buckets)

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.buckets < 2:
            raise ValueError("a window needs seconds > 0 and at least 2 buckets")

    def bucket(self, t: float) -> int:
        return int(t * self.buckets // self.seconds)


# The router's statistics window: the Preble paper's H of 3 minutes, kept in 30 s buckets.
ROUTER_WINDOW = WindowSpec(180.0, 6)


class WindowSums:
    """`k` running sums over the last `n` buckets."""

    __slots__ = ("_ids", "_vals", "_memo")

    def __init__(self, n: int, k: int) -> None:
        self._ids = array("q", [-(1 << 62)]) * n  # bucket id each slot holds
        self._vals = array("d", bytes(8 * n * k))
        self._memo: tuple[int, list[float]] | None = None  # (bucket, totals) of the last query

    def add(self, b: int, values: Sequence[float]) -> None:
        """Add `values` to bucket `b` (ignored when `b` has already left the window)."""
        ids, k = self._ids, len(values)
        n = len(ids)
        s = b % n
        cur = ids[s]
        base = s * k
        if cur != b:
            if cur > b:
                return
            ids[s] = b
            for i in range(k):
                self._vals[base + i] = 0.0
        vals = self._vals
        for i, v in enumerate(values):
            vals[base + i] += v
        memo = self._memo
        if memo is not None:
            if memo[0] - n < b <= memo[0]:
                totals = memo[1]
                for i, v in enumerate(values):
                    totals[i] += v
            elif b > memo[0]:
                self._memo = None

    def totals(self, b: int) -> list[float]:
        """Sums over the window that ends with bucket `b` (memoised until a later bucket)."""
        memo = self._memo
        if memo is not None and memo[0] == b:
            return memo[1]
        out = self._sum(b - len(self._ids), b)
        self._memo = (b, out)
        return out

    def halves(self, b: int) -> tuple[list[float], list[float]]:
        """Sums over the older and the newer half of the window that ends with bucket `b`."""
        n = len(self._ids)
        return self._sum(b - n, b - n // 2), self._sum(b - n // 2, b)

    def add_window(self, other: WindowSums, b: int, sign: float = 1.0) -> None:
        """Add (sign=-1: subtract) the buckets `other` holds within the window ending at `b`."""
        k = len(other._vals) // len(other._ids)
        for s, bid in enumerate(other._ids):
            if b - len(other._ids) < bid <= b:
                self.add(bid, [sign * v for v in other._vals[s * k:(s + 1) * k]])

    def copy(self) -> WindowSums:
        twin = WindowSums.__new__(WindowSums)
        twin._ids, twin._vals, twin._memo = array("q", self._ids), array("d", self._vals), None
        return twin

    def _sum(self, lo: int, hi: int) -> list[float]:
        """Sums of the buckets with lo < id <= hi."""
        ids, vals = self._ids, self._vals
        k = len(vals) // len(ids)
        out = [0.0] * k
        for s, bid in enumerate(ids):
            if lo < bid <= hi:
                base = s * k
                for i in range(k):
                    out[i] += vals[base + i]
        return out
