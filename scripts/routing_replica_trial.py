"""A trial of the default policy with a credit for the copies it makes, at every load of the
committed grids (2, 4, 16 and 32 replicas; 8 in both memory regimes), against the default as it is
and the peers' grid figures.

The default prices each request alone, so it copies a prefix to another worker only when the
holder's queue outgrows the copy's prefill; it never counts what the copy would save the prefix's
later requests (loogle at 16 and 32 replicas: each document stays on one worker; see the routing
README). The trial credits a worker that lacks the prefix with that saving: the prefix's requests
in the tree's window, shared among its holders and the copy, times how much cheaper the next such
request would be there than at the cheapest holder (both priced by the policy's own estimate, as
if the worker held the prefix). Less what the copy's prefill costs the worker's own traffic: the
requests that reach it during the C seconds of that prefill (its rate in the same window) wait
C/2 each on average. Only workers with nothing routed to them earn it (a copy on a busy worker
also slows what it runs).

Each point is run at the grid's size with its warm-up cut, for the default and the trial, and
compared with the best of the other policies in the committed grid at that point.

    python scripts/routing_replica_trial.py --out results/routing/replica_trial.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from preble.bench.compare_config import Variant
from preble.bench.grid import config_of, leaderboard, prepare_workload
from preble.bench.prepare import tokenizer_path
from preble.bench.provenance import source_revision
from preble.bench.sim_runner import Runner
from preble.core.cost_model import CostModel
from preble.core.percentile import percentile
from preble.core.routing import DEFAULT_POLICY, POLICY_SPECS, PolicySpec
from preble.core.routing.latency import Estimate, LatencyConfig, LatencyPolicy, estimate
from preble.sim.cluster import simulate

TRIAL = "latency + copy credit"
GRIDS = ("results/routing/grid_h200_2.json", "results/routing/grid_h200_4_16_all.json",
         "results/routing/grid_h200_32_all.json", "results/routing/grid_paper_ablation.json")
MIN_SPAN_S = 1.0  # the shortest span a window's counts are turned into rates over


class CopyCredit(LatencyPolicy):
    """The default with the copy credit of the module docstring."""

    name = TRIAL

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started: float | None = None  # the first decision: the window's span until it is full

    def estimates(self, match, prompt: int, output: int, now: float) -> Estimate:
        est = super().estimates(match, prompt, output, now)
        self.started = now if self.started is None else self.started
        holders = est.held >= match.cached_tokens
        node = _deepest_held(match)
        if node is None or holders.all():
            return est
        loads, bucket = self._loads, self.tree.bucket()
        span = max(MIN_SPAN_S, min(now - self.started, self.config.tree_window_s))
        requests = sum(self.tree.stats(node, w, bucket)[0] for w in loads.ids)
        rate = np.array([self.tree.load(w, bucket)[0] for w in loads.ids]) / span
        view = loads.view(now)
        as_holder = estimate(self.cost, view, prompt, np.full(len(loads), match.cached_tokens, np.int64),
                             output, self.config, loads.prefill_scale, loads.decode_scale)
        saving = np.maximum(0.0, est.total[holders].min() - as_holder.total)
        credit = np.maximum(0.0, requests / (holders.sum() + 1) * saving - rate * est.prefill ** 2 / 2)
        credit[holders | (view.batch > 0)] = 0.0
        return replace(est, work=est.work - credit)


def _deepest_held(match):
    """The deepest tree node inside the longest cached prefix (None: nothing cached)."""
    inside = [n for n in match.path if n.depth + len(n.tokens) <= match.cached_tokens]
    return inside[-1] if match.cached_tokens and inside else None


POLICY_SPECS[TRIAL] = PolicySpec(lambda clock, cost, cfg, seed: CopyCredit(clock, cost, cfg), LatencyConfig, TRIAL)


def run_cell(grid: str, workload: str, replicas: int, memory: str) -> list[dict]:
    """Every load of one grid cell, for the default and the trial."""
    doc = json.loads(Path(grid).read_text())
    cfg = config_of(doc)
    rates = next(r["rates"] for r in doc["rates"] if (r["workload"], r["replicas"], r["memory"]) == (workload, replicas, memory))
    prep = prepare_workload(cfg, workload, tokenizer_path(cfg.base))
    runner = Runner(cfg.compare_config(memory, 0), prep, CostModel.load(cfg.base.cost_model))
    rows = []
    for rate in rates:
        n = runner.size(rate)
        reqs = prep.requests(n, rate, 0)
        for policy in (DEFAULT_POLICY, TRIAL):
            recs = simulate(reqs, runner.cfg.sim_config(replicas, Variant(policy, policy)), runner.cost)
            lat = [r.latency for r in recs[int(n * cfg.base.warmup_fraction):]]
            rows.append({"workload": workload, "replicas": replicas, "memory": memory, "rate": rate, "seed": 0,
                         "policy": policy, "mean_latency": statistics.mean(lat), "p99_latency": percentile(lat, 99)})
    print(workload, replicas, memory, [(r["policy"], round(r["mean_latency"], 3)) for r in rows], flush=True)
    return rows


def cells(workloads: set[str]) -> list[tuple[str, str, int, str]]:
    """(grid, workload, replicas, memory) of every cell of the grids on these workloads."""
    return [(g, r["workload"], r["replicas"], r["memory"]) for g in GRIDS
            for r in json.loads(Path(g).read_text())["rates"] if r["workload"] in workloads]


def peers(grid: str) -> list[dict]:
    """The grid's seed-0 rows of its listed policies other than the default."""
    doc = json.loads(Path(grid).read_text())
    listed = set(doc["config"]["policies"]) - {DEFAULT_POLICY}
    return [r for r in doc["rows"] if r["policy"] in listed and r["seed"] == 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="toolbench,agent,programming,videoqa,loogle,mooncake,zipf")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    revision = source_revision()
    todo = cells(set(args.workloads.split(",")))
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [row for cell in pool.map(run_cell, *zip(*todo)) for row in cell]
    others = [r for g in GRIDS for r in peers(g)]
    reference = sorted({r["policy"] for r in others})
    boards = {p: leaderboard({"rows": others + [r for r in rows if r["policy"] == p]}, reference + [p])[p]
              for p in (DEFAULT_POLICY, TRIAL)}
    doc = {"meta": {**revision, "date": datetime.now(UTC).isoformat(timespec="seconds"), "device": "cpu",
                    "grids": list(GRIDS), "trial": TRIAL},
           "rows": rows, "leaderboard": boards, "peers": reference}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
