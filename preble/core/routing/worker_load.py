"""The router's running model of one worker's load: the prefill work queued on it and the
requests it serves.

Every routing decision adds its request's predicted prefill time to the worker's queue at once,
so decisions made between two load reports never herd onto the worker that looked idlest at the
last one. The queue drains as a fluid: work routed at time t with the queue busy until F is done
at max(F, t) + its seconds. A worker whose load report shows no prefill work left has none beyond
what was routed since (the fluid drains too slowly where the cost model is too slow). The report's
prefill tokens are not a floor: its waiting requests' prompts are priced at what the cache holds
now, and those sharing a prefix another request is computing will find it cached when admitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..messages import LoadReport


@dataclass(frozen=True, slots=True)
class LoadView:
    """A worker's predicted state at one instant, as scorers read it."""

    queue_s: float  # prefill seconds a request routed now waits for
    batch: int  # requests routed to it and not done: those ahead in the queue decode by the time it prefills
    context: int  # their context tokens (prompt + half the expected output)
    step_tokens: int  # tokens one forward pass takes


class WorkerLoad:
    def __init__(self, order: int, step_tokens: int) -> None:
        self.order = order  # the order workers were added
        self.last_chosen = -1  # the decision that last chose it (-1: none yet); ties go to the least recent
        self.step_tokens = step_tokens
        self.busy_until = float("-inf")  # when the prefill work routed so far is predicted done
        self.routed_since_report_s = 0.0
        self.batch = 0
        self.context = 0
        self._context: dict[str, int] = {}  # request id -> its context tokens

    def view(self, now: float) -> LoadView:
        return LoadView(max(0.0, self.busy_until - now), self.batch, self.context, self.step_tokens)

    def add(self, request_id: str, prefill_s: float, context: int, now: float) -> None:
        """Queue a routed request's prefill (its passes' seconds, decodes sharing them included)."""
        self.busy_until = max(self.busy_until, now) + prefill_s
        self.routed_since_report_s += prefill_s
        self._context[request_id] = context
        self.batch += 1
        self.context += context

    def remove(self, request_id: str) -> None:
        """The request is done (or failed)."""
        context = self._context.pop(request_id, None)
        if context is not None:
            self.batch -= 1
            self.context -= context

    def on_report(self, report: LoadReport, now: float) -> None:
        if report.step_tokens > 0:
            self.step_tokens = report.step_tokens
        if report.prefill_tokens == 0:
            self.busy_until = min(self.busy_until, now + self.routed_since_report_s)
        self.routed_since_report_s = 0.0
