"""Waiting-queue policies: in which order a replica admits the requests waiting for it.

Each policy is a plain object. The scheduler asks for an admission order, admits a prefix of it
(until the token budget or the KV runs out) and reports how many it admitted, so a stateful
policy such as Preble's can carry its position over to the next step.

The cache-aware policies rank only the oldest `window` waiting requests (the rest follow in
arrival order): one step admits far fewer than that, and ranking costs a prefix match per
request, which under overload would grow with the queue at every step.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .request import Request

MatchLen = Callable[[list[int]], int]


class WaitingQueue(Protocol):
    def add(self, req: Request) -> None: ...
    def remove(self, req: Request) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self): ...
    def ordered(self, match_len: MatchLen) -> list[Request]: ...
    def admitted(self, n: int) -> None: ...


class _ArrivalQueue:
    """Requests kept in arrival order (a preempted request returns to its arrival place)."""

    def __init__(self) -> None:
        self._reqs: dict[Request, tuple[float, int]] = {}
        self._seq = itertools.count()

    def add(self, req: Request) -> None:
        self._reqs[req] = (req.arrival_time, next(self._seq))

    def remove(self, req: Request) -> None:
        del self._reqs[req]

    def __len__(self) -> int:
        return len(self._reqs)

    def __iter__(self):
        return iter(self._by_arrival())

    def _by_arrival(self) -> list[Request]:
        return sorted(self._reqs, key=self._reqs.__getitem__)

    def admitted(self, n: int) -> None:
        """Stateless orderings need no bookkeeping."""


class FCFSQueue(_ArrivalQueue):
    """First come, first served."""

    def ordered(self, match_len: MatchLen) -> list[Request]:
        return self._by_arrival()


RANK_WINDOW = 256  # waiting requests a cache-aware policy ranks per step (module docstring)


class LPMQueue(_ArrivalQueue):
    """Longest prefix match first (SGLang's `lpm`); ties by arrival."""

    def __init__(self, window: int = RANK_WINDOW) -> None:
        super().__init__()
        self.window = window

    def ordered(self, match_len: MatchLen) -> list[Request]:
        reqs = self._by_arrival()
        head, tail = reqs[:self.window], reqs[self.window:]
        matched = {r: match_len(r.all_token_ids) for r in head}
        return sorted(head, key=lambda r: -matched[r]) + tail


@dataclass(frozen=True)
class PrebleQueueConfig:
    num_groups: int = 10  # P: priority groups by cache hit ratio
    quota_step: int = 10  # k: group g admits up to (g + 1) * k requests per visit
    window: int = RANK_WINDOW  # the oldest requests ranked per step; later ones follow by arrival


class PrebleQueue(_ArrivalQueue):
    """Preble's priority-fair queue (paper section 3).

    A request's hit ratio (cached tokens / tokens) puts it in one of P groups. Groups are visited
    round-robin from the highest; a visit to group g admits up to (g + 1) * k requests in arrival
    order. High-hit requests go first, which keeps their prefix warm, yet every group is visited
    each cycle, so requests with little reuse are never starved. Groups are recomputed at every
    ordering because the cache changes between steps.
    """

    def __init__(self, config: PrebleQueueConfig = PrebleQueueConfig()) -> None:
        super().__init__()
        self.config = config
        self._group = config.num_groups - 1  # group being visited
        self._used = 0  # admissions in the current visit
        self._trace: list[tuple[int, int]] = []

    def group_of(self, req: Request, match_len: MatchLen) -> int:
        tokens = req.all_token_ids
        ratio = match_len(tokens) / len(tokens)
        return min(self.config.num_groups - 1, int(ratio * self.config.num_groups))

    def quota(self, group: int) -> int:
        return (group + 1) * self.config.quota_step

    def ordered(self, match_len: MatchLen) -> list[Request]:
        reqs = self._by_arrival()
        head, tail = reqs[:self.config.window], reqs[self.config.window:]
        groups: dict[int, deque[Request]] = {}
        for req in head:
            groups.setdefault(self.group_of(req, match_len), deque()).append(req)
        order: list[Request] = []
        self._trace = []
        group, used = self._group, self._used
        remaining = len(head)
        while len(order) < remaining:
            queue = groups.get(group)
            while queue and used < self.quota(group):
                order.append(queue.popleft())
                used += 1
                if used < self.quota(group) and queue:
                    self._trace.append((group, used))
                else:  # this visit is over: the next admission starts the next group's visit
                    self._trace.append(((group - 1) % self.config.num_groups, 0))
            group, used = (group - 1) % self.config.num_groups, 0
        self._trace += [(group, used)] * len(tail)  # arrival-order admissions leave the visit be
        return order + tail

    def admitted(self, n: int) -> None:
        if n:
            self._group, self._used = self._trace[n - 1]


POLICIES: dict[str, Callable[[], WaitingQueue]] = {
    "fcfs": FCFSQueue,
    "lpm": LPMQueue,
    "preble": PrebleQueue,
}


def make_waiting_queue(name: str) -> WaitingQueue:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown local policy {name!r}; choose one of {sorted(POLICIES)}") from None
