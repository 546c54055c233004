"""What the router believes each worker caches: the global tree, fed by KV events where a worker
sends them and by the prompts routed to it where it does not.

Shared by the policies that read the workers' caches (e2, latency). A worker's KV events are
followed while they make sense; an event naming a page never seen (a gap) or a page size other
than the router's stops that, the worker's event-fed holdings are dropped, and it is tracked by
routed prompts until a resync (or a CacheCleared, from which an engine that cannot resync starts
over). A routed prompt counts as held by its worker for `pending_ttl_s` when the worker sends
events (until they tell), for `routed_ttl_s` when it does not; for the latter, a response that
reports fewer cached tokens than believed drops the holdings that expired no later than the one
it missed (LRU: whatever was used before it is gone too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..global_tree import EventGap, GlobalTree, Node, PageSizeMismatch, TreeMatch
from ..kv_events import CacheCleared, KVEvent, PagesStored
from ..messages import LoadReport
from ..pages import DEFAULT_PAGE_SIZE
from ..window_stats import ROUTER_WINDOW
from .base import EventsState, HotPrefixes, PrefixInfo, WorkerInfo


@dataclass(frozen=True)
class CacheViewConfig:
    page_size: int = DEFAULT_PAGE_SIZE  # the workers' KV page size; events of another size are not followed
    window_s: float = ROUTER_WINDOW.seconds  # the tree's statistics window (and how long unused nodes are kept)
    window_buckets: int = ROUTER_WINDOW.buckets  # the window is kept in this many buckets
    pending_ttl_s: float = 30.0  # a routed prompt counts as held this long by a worker with live events
    routed_ttl_s: float = 300.0  # ... and this long by a worker tracked by routed prompts
    gc_budget: int = 64  # tree nodes the collector examines per routing decision


@dataclass(frozen=True, slots=True)
class Holding:
    """What the router believed a worker held of a routed prompt, to correct it when the
    response says otherwise (workers without live events only)."""

    believed: int  # tokens
    expiries: tuple[tuple[int, float], ...]  # (end token, expiry) of the routed holdings on the path


class CacheView:
    def __init__(self, config: CacheViewConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.tree = GlobalTree(config.page_size, clock, config.window_s, config.window_buckets)
        self._events: dict[str, tuple[EventsState, str | None]] = {}

    def add_worker(self, worker_id: str) -> None:
        self._events.setdefault(worker_id, (EventsState.NONE, None))

    def remove_worker(self, worker_id: str) -> None:
        self._events.pop(worker_id, None)
        self.tree.remove_worker(worker_id)

    def worker_info(self, worker_id: str, load_s: float | None) -> WorkerInfo:
        state = self._events.get(worker_id)
        return WorkerInfo(load_s, self.tree.held_pages(worker_id), state[0] if state else None,
                          state[1] if state else None)

    def hot_prefixes(self, limit: int, scan_budget: int) -> HotPrefixes:
        """The tree's most used prefixes in its window, with their holders and live assignments."""
        now = self.clock()
        out = []
        for node, requests in self.tree.hottest(limit, scan_budget):
            a = node.assigned
            assigned = list(a.workers) if a is not None and a.until > now else []
            out.append(PrefixInfo(self.tree.path_tokens(node), requests, self.tree.holders(node), assigned,
                                  a.reason if assigned else None))
        return HotPrefixes(self.tree.window.seconds, out)

    def follows_events(self, worker_id: str) -> bool:
        state = self._events.get(worker_id)
        return state is not None and state[0] is EventsState.LIVE

    # ------------------------------------------------------------------ feeds

    def on_kv_event(self, worker_id: str, event: KVEvent) -> None:
        """Apply an event; dropped for unknown workers, incompatible ones, and after a gap until
        a CacheCleared."""
        state = self._events.get(worker_id)
        if state is None or state[0] is EventsState.INCOMPATIBLE or \
                (state[0] is EventsState.GAP and not isinstance(event, CacheCleared)):
            return
        self._follow(worker_id, lambda: self.tree.apply(worker_id, event))

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        state = self._events.get(worker_id)
        if state is None or state[0] is EventsState.INCOMPATIBLE:
            return
        self._follow(worker_id, lambda: self.tree.replace_worker(worker_id, stored))

    def check_report(self, report: LoadReport) -> None:
        """A worker whose page size differs from the router's cannot be mirrored."""
        state = self._events.get(report.worker_id)
        if state is not None and state[0] is not EventsState.INCOMPATIBLE and \
                report.page_size != self.config.page_size:
            self._stop_following(report.worker_id, EventsState.INCOMPATIBLE,
                                 f"page size {report.page_size} != the router's {self.config.page_size}")

    def _follow(self, worker_id: str, apply: Callable[[], None]) -> None:
        try:
            apply()
        except PageSizeMismatch as e:
            self._stop_following(worker_id, EventsState.INCOMPATIBLE, str(e))
            return
        except EventGap as e:
            self._stop_following(worker_id, EventsState.GAP, str(e))
            return
        self._events[worker_id] = (EventsState.LIVE, None)

    def _stop_following(self, worker_id: str, state: EventsState, why: str) -> None:
        """Its events cannot be mirrored: forget what they said and track it by routed prompts."""
        self._events[worker_id] = (state, why)
        self.tree.apply(worker_id, CacheCleared())

    # ------------------------------------------------------------------ routing

    def match(self, tokens: list[int]) -> TreeMatch:
        """The prompt's walk down the tree (after a bounded step of garbage collection)."""
        self.tree.gc(self.config.gc_budget)
        return self.tree.match(tokens)

    def commit(self, match: TreeMatch, worker_id: str) -> tuple[list[Node], Holding | None]:
        """Count the routed prompt as held by the worker; returns its path in the tree and, for a
        worker without live events, what to check its response against."""
        now = self.clock()
        live = self.follows_events(worker_id)
        holding = None if live else self._holding(match, worker_id)
        ttl = self.config.pending_ttl_s if live else self.config.routed_ttl_s
        return self.tree.insert(match, worker_id, now + ttl), holding

    def _holding(self, match: TreeMatch, worker_id: str) -> Holding:
        held = match.held.get(worker_id, 0)
        nodes = list(match.path) + ([match.partial] if match.partial is not None else [])
        expiries = []
        for node in nodes:
            exp = self.tree.routed_expiry(node, worker_id)
            if exp is not None and node.depth < held:
                expiries.append((min(node.end, held), exp))
        return Holding(held, tuple(expiries))

    def correct(self, worker_id: str, holding: Holding | None, cached_tokens: int) -> None:
        """The worker reported `cached_tokens` for a prompt believed held up to `holding.believed`:
        if fewer, it had evicted the part that expired first, and everything older with it."""
        if holding is None or not holding.expiries or cached_tokens >= holding.believed:
            return
        cutoff = next((exp for end, exp in holding.expiries if end > cached_tokens), None)
        if cutoff is not None:
            self.tree.drop_routed(worker_id, cutoff)
