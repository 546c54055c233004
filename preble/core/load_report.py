"""A replica's load report, built the same way by the live worker and by the simulator.

The router's policies read it; building it in one place keeps the simulator's promise that
policies see in simulation what they see in production.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .messages import LoadReport, StepTotals
from .request import Request
from .scheduler import Scheduler

# The window of a report's hit ratio and time per output token: the worker's and the simulator's.
STATS_WINDOW_S = 180.0


class RequestWindow:
    """Hit ratio and time per output token of the requests finished within the last `window_s`
    (running sums: reading is O(expired))."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self.clock = clock
        self._done: deque[tuple[float, int, int, int, float]] = deque()
        self._sums = [0, 0, 0, 0.0]  # prompt tokens, cached tokens, tokens after the first, decode seconds

    def record(self, req: Request) -> None:
        """Count a finished request (one that produced a first token)."""
        if req.first_token_time is None or req.finish_time is None:
            return
        item = (req.finish_time, len(req.prompt_token_ids), req.num_cached_tokens or 0,
                len(req.output_token_ids) - 1, req.finish_time - req.first_token_time)
        self._done.append(item)
        for i in range(4):
            self._sums[i] += item[i + 1]

    def read(self) -> tuple[float, float]:
        """(hit ratio, seconds per output token after the first); 0.0 where nothing is known."""
        horizon, done, s = self.clock() - self.window_s, self._done, self._sums
        while done and done[0][0] < horizon:
            item = done.popleft()
            for i in range(4):
                s[i] -= item[i + 1]
        if not done:  # no float residue once empty
            s[3] = 0.0
        return (s[1] / s[0] if s[0] else 0.0), (s[3] / s[2] if s[2] > 0 else 0.0)


def build_load_report(worker_id: str, now: float, scheduler: Scheduler, window: RequestWindow,
                      steps: StepTotals = StepTotals()) -> LoadReport:
    """The replica's state now. Prefill work left counts, for waiting requests, only the part of
    the prompt its cache does not hold now (what admission would compute)."""
    cache, alloc = scheduler.cache, scheduler.allocator
    waiting = list(scheduler.waiting)
    prefill_tokens = sum(r.num_tokens - cache.match_len(r.all_token_ids[:-1]) for r in waiting)
    prefill_requests = len(waiting)
    decode_batch = decode_tokens = 0
    for r in scheduler.running:
        if r.in_prefill:
            prefill_tokens += r.num_tokens - r.num_computed_tokens
            prefill_requests += 1
        else:
            decode_batch += 1
            decode_tokens += r.num_tokens
    hit_ratio, tpot = window.read()
    return LoadReport(
        worker_id=worker_id, time=now, running=len(scheduler.running), waiting=len(waiting),
        waiting_tokens=sum(r.num_tokens for r in waiting), kv_used_pages=alloc.num_used,
        kv_evictable_pages=cache.evictable_pages, kv_total_pages=alloc.num_pages, page_size=alloc.page_size,
        hit_ratio=hit_ratio, tpot=tpot, num_preemptions=scheduler.num_preemptions,
        prefill_tokens=prefill_tokens, prefill_requests=prefill_requests, decode_batch=decode_batch,
        decode_tokens=decode_tokens, step_tokens=scheduler.config.max_num_batched_tokens, steps=steps)
