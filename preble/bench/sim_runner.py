"""Simulated runs of one prepared workload: a point (replicas, rate, variant) and round_robin's
rate ladder, from a light load until it saturates, then one step beyond. Each run's statistics
leave out its first `warmup_fraction` of arrivals (cold caches)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..core.cost_model import CostModel
from ..sim.cluster import simulate
from ..sim.report import summarize
from .compare_config import METRICS, CompareConfig, Variant
from .prepare import Prepared, capacity, unloaded_latency


def _summary(records) -> dict[str, Any]:
    s = summarize(records)
    return {**{k: s[k] for k in METRICS}, "requests": s["requests"], "branches": s["branches"]}


class Runner:
    """Runs points of one workload; sized and seeded by the config."""

    def __init__(self, cfg: CompareConfig, prep: Prepared, cost: CostModel) -> None:
        self.cfg, self.prep, self.cost = cfg, prep, cost

    def size(self, rate: float) -> int:
        """Requests of a run: `duration_s` of arrivals within the bounds; a trace whole (to the bound)."""
        cfg = self.cfg
        if self.prep.arrivals is not None:
            return min(cfg.max_requests, len(self.prep.prompts))
        return max(cfg.min_requests, min(cfg.max_requests, round(rate * cfg.duration_s)))

    def point(self, replicas: int, rate: float, variant: Variant, n: int | None = None) -> dict[str, Any]:
        reqs = self.prep.requests(n or self.size(rate), rate, self.cfg.seed)
        records = simulate(reqs, self.cfg.sim_config(replicas, variant), self.cost)
        steady = records[int(len(records) * self.cfg.warmup_fraction):]  # records come in arrival order
        return {"workload": self.prep.name, "replicas": replicas, "rate": rate,
                "policy": variant.label, **_summary(steady)}

    def light_rate(self, replicas: int) -> float:
        """`light_load` of the estimated capacity, halved while round_robin is far from unloaded
        there (the estimate assumes every shared token hits; a cache that thrashes serves less)."""
        cfg = self.cfg
        rate = cfg.light_load * replicas * capacity(self.prep, self.cost)
        limit = cfg.light_latency * unloaded_latency(self.prep, self.cost)
        for _ in range(cfg.max_halvings):
            if self.point(replicas, rate, Variant("round_robin", "round_robin"))["mean_latency"] <= limit:
                break
            rate /= 2
        return rate

    def climb(self, replicas: int, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], float | None]:
        """round_robin up the rate ladder: its rows (one per rate) and the knee (None: never)."""
        cfg = self.cfg
        rate = self.light_rate(replicas)
        rows, knee = [], None
        for _ in range(cfg.max_rates):
            rows.append(self.point(replicas, rate, Variant("round_robin", "round_robin")))
            log(f"{self.prep.name} x{replicas} {rate:.3g}/s round_robin: mean {rows[-1]['mean_latency']:.3g} s "
                f"p99 {rows[-1]['p99_latency']:.3g} s")
            if knee is not None:
                break
            if rows[-1]["p99_latency"] > cfg.saturation_factor * rows[0]["p99_latency"]:
                knee = rate
            rate *= cfg.rate_step
        return rows, knee

    def ladder(self, replicas: int, policies: Sequence[str],
               log: Callable[[str], None]) -> tuple[list[dict[str, Any]], float | None]:
        """Every policy at every rate of round_robin's ladder: the rows and the knee."""
        rr, knee = self.climb(replicas, log)
        rows = [row if p == "round_robin" else self.point(replicas, row["rate"], Variant(p, p))
                for row in rr for p in policies]
        return rows, knee
