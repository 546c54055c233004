"""Why the default policy trails at its worst grid points: each point re-run at this commit for the
default and the best policy there, with where the requests went.

The points are those of the committed grids where the default is more than 3% behind the best
policy in mean or p99 latency, the largest ratios first. Each is run twice with the grid's own
configuration: at the grid's size with its warm-up cut (the grid's figure, at this commit), and
with twice the requests, keeping the second half only (past the cold start, when every prefix is
first computed; the workload is generated at that size too, so its requests are not the grid's).
For each run: mean and p99 latency, mean TTFT and decode time, the workers that
served at least 1% of the requests, the busiest worker's share, and prefix groups (requests
grouped by their first `GROUP_TOKENS` tokens) by how many workers served each.

    python scripts/routing_worst_points.py --out results/routing/worst_points.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from preble.bench.compare_config import Variant
from preble.bench.grid import WITHIN_BEST, averaged, config_of, prepare_workload
from preble.bench.prepare import tokenizer_path
from preble.bench.provenance import source_revision
from preble.bench.report.registry import GRIDS
from preble.bench.sim_runner import Runner
from preble.core.cost_model import CostModel
from preble.core.percentile import percentile
from preble.core.routing import DEFAULT_POLICY, POLICIES
from preble.sim.cluster import simulate

GROUP_TOKENS = 1024  # a prefix group: requests whose first this many tokens are equal
SERVING_SHARE = 0.01  # a worker counts as used when it served at least this share of the requests


def misses(grid_files: list[str], limit: int) -> list[dict]:
    """The points where the default is behind the best by more than WITHIN_BEST, worst first."""
    found = {}
    for path in grid_files:
        doc = json.loads(Path(path).read_text())
        for (workload, replicas, memory, rate), runs in averaged(doc["rows"]).items():
            pols = {p: v for p, v in runs.items() if p in POLICIES}  # ablation variants aside
            if DEFAULT_POLICY not in pols:
                continue
            ratios = {m: pols[DEFAULT_POLICY][m] / min(v[m] for v in pols.values()) for m in ("mean", "p99")}
            metric = max(ratios, key=ratios.get)
            if ratios[metric] <= WITHIN_BEST:
                continue
            best = min(pols, key=lambda p: pols[p][metric])
            key = (workload, replicas, memory, round(rate, 6))
            if key not in found or found[key]["ratio"] < ratios[metric]:
                found[key] = {"grid": path, "workload": workload, "replicas": replicas, "memory": memory, "rate": rate,
                              "metric": metric, "ratio": ratios[metric], "best": best, "grid_ratios": ratios}
    return sorted(found.values(), key=lambda p: -p["ratio"])[:limit]


def placement(records, group_of: dict[str, tuple]) -> dict:
    """Where the requests went: workers used, the busiest one's share, prefix groups by replicas."""
    per_worker = Counter(r.worker for r in records)
    holders = defaultdict(set)
    for r in records:
        holders[group_of[r.request_id]].add(r.worker)
    lat = [r.latency for r in records]
    return {"requests": len(records), "mean_latency": statistics.mean(lat), "p99_latency": percentile(lat, 99),
            "mean_ttft": statistics.mean(r.ttft for r in records),
            "mean_decode": statistics.mean(r.latency - r.ttft for r in records),
            "workers_used": sum(n >= SERVING_SHARE * len(records) for n in per_worker.values()),
            "busiest_share": max(per_worker.values()) / len(records),
            "prefix_groups": len(holders),
            "workers_per_group": dict(sorted(Counter(len(ws) for ws in holders.values()).items()))}


def run_point(point: dict, preps: dict) -> dict:
    cfg = config_of(json.loads(Path(point["grid"]).read_text()))
    name, cost = point["workload"], CostModel.load(cfg.base.cost_model)
    longer = replace(cfg, base=replace(cfg.base, max_requests=2 * cfg.base.max_requests))
    for size_cfg in (cfg, longer):
        key = (name, size_cfg.base.max_requests)
        if key not in preps:
            preps[key] = prepare_workload(size_cfg, name, tokenizer_path(cfg.base))
    runner = Runner(cfg.compare_config(point["memory"], 0), preps[(name, cfg.base.max_requests)], cost)
    n = runner.size(point["rate"])
    out = {}
    for policy in dict.fromkeys((DEFAULT_POLICY, point["best"])):
        sim_cfg = runner.cfg.sim_config(point["replicas"], Variant(policy, policy))
        runs = {}
        for label, size, keep_from, prep in (
                ("grid", n, int(n * cfg.base.warmup_fraction), preps[(name, cfg.base.max_requests)]),
                ("second_half", 2 * n, n, preps[(name, longer.base.max_requests)])):
            reqs = prep.requests(size, point["rate"], 0)
            group_of = {r.request_id: tuple(r.prompt_token_ids[:GROUP_TOKENS]) for r in reqs}
            runs[label] = placement(simulate(reqs, sim_cfg, runner.cost)[keep_from:], group_of)
        out[policy] = runs
    return {**point, "runs": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", nargs="*", default=list(GRIDS))
    ap.add_argument("--limit", type=int, default=10, help="points, worst first")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    revision = source_revision()
    preps: dict = {}
    points = []
    for point in misses(args.grids, args.limit):
        points.append(run_point(point, preps))
        runs = points[-1]["runs"]
        print(point["workload"], point["replicas"], point["memory"], f"{point['rate']:.3g}/s",
              {p: (round(r["second_half"]["mean_latency"], 3), r["second_half"]["workers_used"]) for p, r in runs.items()},
              flush=True)
    doc = {"meta": {**revision, "date": datetime.now(UTC).isoformat(timespec="seconds"), "device": "cpu",
                    "grids": args.grids, "group_tokens": GROUP_TOKENS}, "points": points}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
