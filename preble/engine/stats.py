"""Windowed request statistics a worker reports to the router (hit ratio, time per output token)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..core.request import Request


class WindowedStats:
    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self.clock = clock
        # (finish time, prompt tokens, cached tokens, output tokens, seconds spent decoding)
        self._done: deque[tuple[float, int, int, int, float]] = deque()

    def record(self, req: Request) -> None:
        if req.first_token_time is None or req.finish_time is None:
            return
        self._done.append((req.finish_time, len(req.prompt_token_ids), req.num_cached_tokens or 0,
                           len(req.output_token_ids), req.finish_time - req.first_token_time))

    def _expire(self) -> None:
        horizon = self.clock() - self.window_s
        while self._done and self._done[0][0] < horizon:
            self._done.popleft()

    def hit_ratio(self) -> float:
        self._expire()
        prompt = sum(d[1] for d in self._done)
        return sum(d[2] for d in self._done) / prompt if prompt else 0.0

    def tpot(self) -> float:
        """Seconds per output token after the first, over the window; 0.0 when unknown."""
        self._expire()
        tokens = sum(d[3] - 1 for d in self._done)
        return sum(d[4] for d in self._done) / tokens if tokens > 0 else 0.0
