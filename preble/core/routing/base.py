"""The contract between the router (or the simulator) and a routing policy.

A policy is a plain object with an injected clock. The shell tells it which workers exist, feeds
it every worker's KV events and load reports, asks it where each request goes, and tells it when
a request ends. It never does I/O. What the router's pages and metrics show of its state they
read through `worker_info` and `hot_prefixes`, as plain data, never its internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from ..kv_events import KVEvent, PagesStored
from ..messages import LoadReport


class EventsState(StrEnum):
    """How a policy follows a worker's KV events (`CacheView`; `WorkerInfo.kv_events`)."""

    NONE = "none"  # none received yet: tracked by routed prompts
    LIVE = "live"  # followed
    GAP = "gap"  # events were lost: routed prompts until a resync or a CacheCleared
    INCOMPATIBLE = "incompatible"  # another page size: routed prompts for good


@dataclass(frozen=True)
class RouteRequest:
    request_id: str
    token_ids: list[int]  # the prompt, tokenised once by the router
    max_tokens: int  # the output budget, an upper bound on decode work


@dataclass(frozen=True)
class RouteDecision:
    worker_id: str
    branch: str  # why this worker: each policy names its branches with its own StrEnum (e2: E2Branch), or its name
    matched_tokens: int  # prompt tokens the chosen worker is believed to hold
    costs: dict[str, float] = field(default_factory=dict)  # candidate worker -> cost, for explanations


@dataclass(frozen=True)
class RequestDone:
    request_id: str
    worker_id: str
    prompt_tokens: int
    cached_tokens: int  # as reported by the worker
    output_tokens: int
    ttft: float  # seconds from arrival at the router to the first token
    latency: float  # seconds from arrival to the last token
    ok: bool = True


@dataclass(frozen=True)
class WorkerInfo:
    """What a policy knows of one worker, for operators (None: the policy keeps no such figure)."""

    load_s: float | None = None  # the policy's own load figure for it (seconds of queued work)
    cached_pages: int | None = None  # KV pages the policy believes it holds
    kv_events: EventsState | None = None  # how the policy follows its KV events
    kv_events_note: str | None = None  # why they are not followed


@dataclass(frozen=True)
class PrefixInfo:
    """One prefix many requests went through in the policy's statistics window."""

    tokens: list[int]
    requests_in_window: float
    held_by: list[str]  # workers holding it now
    assigned_to: list[str]  # workers a live steering decision sends it to
    assignment: str | None  # that decision's reason (e2: E2Branch.REBALANCE | E2Branch.REPLICATE)


@dataclass(frozen=True)
class HotPrefixes:
    window_s: float | None  # the statistics window; None: the policy keeps per-prefix statistics none
    prefixes: list[PrefixInfo] = field(default_factory=list)


class Described:
    """The introspection of a policy that keeps no per-worker figures or per-prefix statistics."""

    def worker_info(self, worker_id: str) -> WorkerInfo:
        return WorkerInfo()

    def hot_prefixes(self, limit: int, scan_budget: int) -> HotPrefixes:
        return HotPrefixes(None)


class HeldPagesDescribed(Described):
    """The introspection of a policy that mirrors the workers' caches in a `GlobalTree` (`tree`)."""

    def worker_info(self, worker_id: str) -> WorkerInfo:
        return WorkerInfo(cached_pages=self.tree.held_pages(worker_id))


class RoutingPolicy(Protocol):
    name: str

    def add_worker(self, worker_id: str) -> None: ...

    def remove_worker(self, worker_id: str) -> None:
        """Forget the worker and every tree entry it held."""

    def route(self, req: RouteRequest) -> RouteDecision:
        """Choose a worker and record the assignment (it counts as load from now on)."""

    def on_kv_event(self, worker_id: str, event: KVEvent) -> None: ...

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        """Replace everything known of the worker's cache with this full dump."""

    def on_load(self, report: LoadReport) -> None: ...

    def on_done(self, done: RequestDone) -> None: ...

    def worker_info(self, worker_id: str) -> WorkerInfo: ...

    def hot_prefixes(self, limit: int, scan_budget: int) -> HotPrefixes:
        """At most `limit` of the most used prefixes, looking at no more than `scan_budget` nodes."""
