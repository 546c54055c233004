"""The tests' injected clocks: one that moves only when a test moves it, one that ticks on read."""

from __future__ import annotations


class ManualClock:
    """Time `t` that changes only when the test sets or advances it."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class TickingClock:
    """Strictly increasing time: every reading is one tick later."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t
