"""A trial of the default policy with a credit for the copies it makes, at every load of the 4-,
16- and 32-replica grids, against the default as it is and the peers' committed grid figures.

The default prices each request alone, so it copies a prefix to another worker only when the
holder's queue outgrows the copy's prefill; it never counts what the copy would save the prefix's
later requests (loogle at 16 and 32 replicas: each document stays on one worker; see the routing
README). The trial credits a worker that lacks the prefix with that saving: the prefix's requests
in the tree's window, shared among its holders and the copy, times how much cheaper the next such
request would be there than at the cheapest holder (both priced by the policy's own estimate, as
if the worker held the prefix). Only workers with nothing routed to them earn it (spare capacity:
a copy on a busy worker delays what it runs). The copy's own cost stays the policy's price.

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
GRIDS = {4: "results/routing/grid_h200_4_16_all.json", 16: "results/routing/grid_h200_4_16_all.json",
         32: "results/routing/grid_h200_32_all.json"}
MEMORY = "h200"


class CopyCredit(LatencyPolicy):
    """The default with the copy credit of the module docstring."""

    name = TRIAL

    def estimates(self, match, prompt: int, output: int, now: float) -> Estimate:
        est = super().estimates(match, prompt, output, now)
        holders = est.held >= match.cached_tokens
        node = _deepest_held(match)
        if node is None or holders.all():
            return est
        loads = self._loads
        bucket = self.tree.bucket()
        requests = sum(self.tree.stats(node, w, bucket)[0] for w in loads.ids)
        as_holder = estimate(self.cost, loads.view(now), prompt, np.full(len(loads), match.cached_tokens, np.int64),
                             output, self.config, loads.prefill_scale, loads.decode_scale)
        saving = np.maximum(0.0, est.total[holders].min() - as_holder.total)
        credit = requests / (holders.sum() + 1) * saving
        credit[holders | (loads.view(now).batch > 0)] = 0.0
        return replace(est, work=est.work - credit)


def _deepest_held(match):
    """The deepest tree node inside the longest cached prefix (None: nothing cached)."""
    inside = [n for n in match.path if n.depth + len(n.tokens) <= match.cached_tokens]
    return inside[-1] if match.cached_tokens and inside else None


POLICY_SPECS[TRIAL] = PolicySpec(lambda clock, cost, cfg, seed: CopyCredit(clock, cost, cfg), LatencyConfig, TRIAL)


def run_cell(workload: str, replicas: int) -> list[dict]:
    """Every load of one grid cell, for the default and the trial."""
    doc = json.loads(Path(GRIDS[replicas]).read_text())
    cfg = config_of(doc)
    rates = next(r["rates"] for r in doc["rates"]
                 if (r["workload"], r["replicas"], r["memory"]) == (workload, replicas, MEMORY))
    prep = prepare_workload(cfg, workload, tokenizer_path(cfg.base))
    runner = Runner(cfg.compare_config(MEMORY, 0), prep, CostModel.load(cfg.base.cost_model))
    rows = []
    for rate in rates:
        n = runner.size(rate)
        reqs = prep.requests(n, rate, 0)
        for policy in (DEFAULT_POLICY, TRIAL):
            recs = simulate(reqs, runner.cfg.sim_config(replicas, Variant(policy, policy)), runner.cost)
            lat = [r.latency for r in recs[int(n * cfg.base.warmup_fraction):]]
            rows.append({"workload": workload, "replicas": replicas, "memory": MEMORY, "rate": rate, "seed": 0,
                         "policy": policy, "mean_latency": statistics.mean(lat), "p99_latency": percentile(lat, 99)})
    print(workload, replicas, [(r["policy"], round(r["mean_latency"], 3)) for r in rows], flush=True)
    return rows


def peers(cells: list[tuple[str, int]]) -> list[dict]:
    """The committed grids' rows of every other policy at the trial's cells."""
    out = []
    for path in dict.fromkeys(GRIDS.values()):
        for r in json.loads(Path(path).read_text())["rows"]:
            if (r["workload"], r["replicas"]) in cells and r["memory"] == MEMORY and r["policy"] != DEFAULT_POLICY:
                out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="toolbench,agent,programming,videoqa,loogle,mooncake,zipf")
    ap.add_argument("--replicas", default="4,16,32")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    revision = source_revision()
    cells = [(w, int(x)) for w in args.workloads.split(",") for x in args.replicas.split(",")]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [row for cell in pool.map(run_cell, *zip(*cells)) for row in cell]
    others = peers(cells)
    reference = sorted({r["policy"] for r in others})
    boards = {p: leaderboard({"rows": others + [r for r in rows if r["policy"] == p]}, reference + [p])[p]
              for p in (DEFAULT_POLICY, TRIAL)}
    doc = {"meta": {**revision, "date": datetime.now(UTC).isoformat(timespec="seconds"), "device": "cpu",
                    "grids": sorted(set(GRIDS.values())), "trial": TRIAL},
           "rows": rows, "leaderboard": boards, "peers": reference}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
