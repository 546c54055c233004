"""The router's running model of every worker's load: the prefill work queued on it and the
requests it serves, kept as arrays over the workers so that a decision prices them all at once.

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

import numpy as np

from ..messages import LoadReport


@dataclass(frozen=True, slots=True)
class LoadView:
    """The workers' predicted state at one instant, as scorers read it: one element per worker
    (or scalars, for one worker)."""

    queue_s: np.ndarray  # prefill seconds a request routed now waits for
    batch: np.ndarray  # requests routed to it and not done: those ahead in the queue decode by the time it prefills
    context: np.ndarray  # their context tokens (prompt + half the expected output)
    step_tokens: np.ndarray  # tokens one forward pass takes


class LoadTable:
    """Per worker, in the order they were added (`ids`): its queue, batch and context, how many
    tokens a pass takes, how fast its passes are against the cost model (`Calibration`'s scales),
    its KV pages free and evictable at its last load report (free: unbounded until one comes) and
    the pages routed to it since, and when a decision last chose it (-1: never)."""

    _COLUMNS = ("busy_until", "routed_since_report_s", "batch", "context", "step_tokens", "prefill_scale",
                "decode_scale", "kv_free_pages", "kv_evictable_pages", "pages_since_report", "last_chosen")

    def __init__(self, step_tokens: int) -> None:
        self.default_step_tokens = step_tokens
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.busy_until = np.zeros(0)  # when the prefill work routed so far is predicted done
        self.routed_since_report_s = np.zeros(0)
        self.batch = np.zeros(0)  # counts, kept as floats: the estimates mix them with seconds without a cast
        self.context = np.zeros(0)
        self.step_tokens = np.zeros(0)
        self.prefill_scale = np.zeros(0)
        self.decode_scale = np.zeros(0)
        self.kv_free_pages = np.zeros(0)
        self.kv_evictable_pages = np.zeros(0)
        self.pages_since_report = np.zeros(0)
        self.last_chosen = np.zeros(0, np.int64)
        self._requests: dict[str, tuple[str, int]] = {}  # request id -> (worker, its context tokens)
        self.idle = 0  # workers with nothing routed to them (batch 0)

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self.index

    def __len__(self) -> int:
        return len(self.ids)

    def add_worker(self, worker_id: str) -> None:
        self.index[worker_id] = len(self.ids)
        self.ids.append(worker_id)
        new = dict(busy_until=-np.inf, routed_since_report_s=0.0, batch=0, context=0,
                   step_tokens=self.default_step_tokens, prefill_scale=1.0, decode_scale=1.0,
                   kv_free_pages=np.inf, kv_evictable_pages=0, pages_since_report=0, last_chosen=-1)
        for name in self._COLUMNS:
            setattr(self, name, np.append(getattr(self, name), new[name]))
        self.idle += 1

    def remove_worker(self, worker_id: str) -> None:
        i = self.index.pop(worker_id)
        self.idle -= int(self.batch[i] == 0)
        del self.ids[i]
        self.index = {w: k for k, w in enumerate(self.ids)}
        for name in self._COLUMNS:
            setattr(self, name, np.delete(getattr(self, name), i))
        self._requests = {r: v for r, v in self._requests.items() if v[0] != worker_id}

    def view(self, now: float) -> LoadView:
        return LoadView(np.maximum(0.0, self.busy_until - now), self.batch, self.context, self.step_tokens)

    def row(self, worker_id: str) -> dict[str, float]:
        """One worker's columns, as plain numbers."""
        i = self.index[worker_id]
        return {name: getattr(self, name)[i].item() for name in self._COLUMNS}

    def queue_s(self, worker_id: str, now: float) -> float:
        return max(0.0, float(self.busy_until[self.index[worker_id]]) - now)

    def add(self, worker_id: str, request_id: str, prefill_s: float, context: int, now: float,
            new_pages: int = 0) -> None:
        """Queue a routed request's prefill (its passes' seconds, decodes sharing them included),
        which takes `new_pages` KV pages there."""
        i = self.index[worker_id]
        self.pages_since_report[i] += new_pages
        self.busy_until[i] = max(float(self.busy_until[i]), now) + prefill_s
        self.routed_since_report_s[i] += prefill_s
        self._requests[request_id] = (worker_id, context)
        self.idle -= int(self.batch[i] == 0)
        self.batch[i] += 1
        self.context[i] += context

    def remove(self, request_id: str) -> None:
        """The request is done (or failed)."""
        worker_context = self._requests.pop(request_id, None)
        if worker_context is not None:
            i = self.index[worker_context[0]]
            self.batch[i] -= 1
            self.context[i] -= worker_context[1]
            self.idle += int(self.batch[i] == 0)

    def set_scales(self, worker_id: str, prefill_scale: float, decode_scale: float) -> None:
        i = self.index[worker_id]
        self.prefill_scale[i], self.decode_scale[i] = prefill_scale, decode_scale

    def on_report(self, report: LoadReport, now: float) -> None:
        i = self.index[report.worker_id]
        if report.step_tokens > 0:
            self.step_tokens[i] = report.step_tokens
        self.kv_free_pages[i] = report.kv_total_pages - report.kv_used_pages
        self.kv_evictable_pages[i] = report.kv_evictable_pages
        self.pages_since_report[i] = 0
        if report.prefill_tokens == 0:
            self.busy_until[i] = min(float(self.busy_until[i]), now + float(self.routed_since_report_s[i]))
        self.routed_since_report_s[i] = 0.0
