"""How fast each worker really is against the router's cost model, learnt from its load reports.

A cost model comes from a profile of one device and model (or, without one, from first
principles); the workers may be another GPU, another model, CPUs, or share their device. Each
load report carries the worker's forward passes so far in the cost model's terms, with their
measured seconds (`StepTotals`). Between two reports the worker spent t seconds on passes the
model prices at P (prefill) + D (decode); the router fits t ~ alpha * P + beta * D by exponentially
weighted least squares (half-life `half_life_s`), pulled toward (1, 1) by a prior worth
`prior_s` modelled seconds of passes (enough to hold a scale the passes cannot tell, e.g. prefill
on a worker that only decodes), and prices that worker's prefill times alpha and its decode
steps times beta. A simulated worker reports exactly the model's times: (1, 1), exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cost_model import CostModel
from ..messages import StepTotals

SAME = 1e-9  # scales this close to 1 are the model's own (float noise of the sums aside)


@dataclass(frozen=True)
class CalibrationConfig:
    enabled: bool = True
    half_life_s: float = 60.0  # older passes count half as much per this many seconds
    prior_s: float = 0.01  # the cost model's own scale (1, 1) counts as this many modelled seconds of passes
    min_scale: float = 0.02  # scales are kept within [min_scale, max_scale]
    max_scale: float = 500.0


@dataclass
class _Fit:
    last: StepTotals  # the totals of the previous report
    last_time: float
    sums: list[float]  # weighted PP, PD, DD, Pt, Dt


class Calibration:
    def __init__(self, cost: CostModel, config: CalibrationConfig = CalibrationConfig()) -> None:
        self.cost = cost
        self.config = config
        self._fits: dict[str, _Fit] = {}
        self._scales: dict[str, tuple[float, float]] = {}

    def scales(self, worker_id: str) -> tuple[float, float]:
        """(prefill scale, decode scale) of the worker; (1, 1) until it has reported passes."""
        return self._scales.get(worker_id, (1.0, 1.0))

    def forget(self, worker_id: str) -> None:
        for d in (self._fits, self._scales):
            d.pop(worker_id, None)

    def on_report(self, worker_id: str, totals: StepTotals, now: float) -> None:
        if not self.config.enabled:
            return
        fit = self._fits.get(worker_id)
        if fit is None or totals.passes < fit.last.passes:  # first report, or the worker restarted
            self._fits[worker_id] = _Fit(totals, now, [0.0] * 5)
            return
        prefill, decode, seconds = self._delta(fit.last, totals)
        if seconds <= 0 or prefill + decode <= 0:
            return
        keep = 0.5 ** ((now - fit.last_time) / self.config.half_life_s)
        s = fit.sums
        for i, x in enumerate((prefill * prefill, prefill * decode, decode * decode, prefill * seconds,
                               decode * seconds)):
            s[i] = keep * s[i] + x
        fit.last, fit.last_time = totals, now
        self._solve(worker_id, s)

    def _delta(self, a: StepTotals, b: StepTotals) -> tuple[float, float, float]:
        """(modelled prefill s, modelled decode s, measured s) of the passes between two reports."""
        c = self.cost
        prefill = (c.a * (b.prefill_chunks - a.prefill_chunks) + c.b * (b.prefill_tokens - a.prefill_tokens)
                   + c.c * (b.prefill_pairs - a.prefill_pairs))
        decode = (c.d * (b.decode_passes - a.decode_passes) + c.e * (b.decode_seqs - a.decode_seqs)
                  + c.f * (b.decode_context - a.decode_context))
        return prefill, decode, b.seconds - a.seconds

    def _solve(self, worker_id: str, s: list[float]) -> None:
        """Ridge least squares toward (1, 1): (S + r I) x = y + r (1, 1)."""
        r = self.config.prior_s ** 2
        pp, pd, dd, pt, dt = s[0] + r, s[1], s[2] + r, s[3] + r, s[4] + r
        det = pp * dd - pd * pd
        lo, hi = self.config.min_scale, self.config.max_scale
        alpha = min(hi, max(lo, (pt * dd - pd * dt) / det))
        beta = min(hi, max(lo, (pp * dt - pd * pt) / det))
        if abs(alpha - 1) < SAME and abs(beta - 1) < SAME:  # the model's own speed (a simulated worker)
            alpha = beta = 1.0
        self._scales[worker_id] = (alpha, beta)
