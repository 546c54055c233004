"""Where a policy sends what: per-branch and per-worker latency of simulated runs of the Mooncake
trace, for the routing findings (results/routing/README.md).

For each (policy, variant) at each point: requests, mean latency and TTFT, prompt and cached
tokens by branch (exploit, explore, pd, ... for e2; hit, miss, partial for latency), and each
worker's request count and mean latency (the hot spot shows as one slow worker).

    python scripts/routing_breakdown.py --out results/routing/mooncake_breakdown.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from preble.bench.provenance import source_revision
from preble.bench.requests import sim_request
from preble.bench.workloads import make_workload
from preble.core.cost_model import CostModel
from preble.core.routing import default_config
from preble.sim import SimConfig, simulate, summarize

# (label, policy, config overrides)
VARIANTS = (("e2", "e2", {}), ("e2 without P/D balancing", "e2", {"pd_balance": False}),
            ("cache_aware", "cache_aware", {}), ("latency", "latency", {}))
POINTS = ((8, 0.5), (8, 1.0), (16, 0.25), (16, 0.5))  # (replicas, time_scale): the table


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def breakdown(records) -> dict:
    by_branch, by_worker = defaultdict(list), defaultdict(list)
    for r in records:
        by_branch[r.branch].append(r)
        by_worker[r.worker].append(r)
    return {
        "branches": {b: {"requests": len(rs), "mean_latency": _mean([r.latency for r in rs]),
                         "mean_ttft": _mean([r.ttft for r in rs]),
                         "prompt_tokens": _mean([r.prompt_tokens for r in rs]),
                         "cached_tokens": _mean([r.cached_tokens for r in rs])} for b, rs in sorted(by_branch.items())},
        "workers": {w: {"requests": len(rs), "mean_latency": _mean([r.latency for r in rs]),
                        "mean_ttft": _mean([r.ttft for r in rs])} for w, rs in sorted(by_worker.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--num-pages", type=int, default=44_000)
    ap.add_argument("--cost-model", default="results/cost_models/h200_llama3-8b.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cost = CostModel.load(args.cost_model)
    rows = []
    for replicas, scale in POINTS:
        wl = make_workload("mooncake", num_requests=args.requests, seed=0, time_scale=scale)
        reqs = [sim_request(r) for r in wl.requests]
        for label, policy, overrides in VARIANTS:
            cfg = replace(default_config(policy), **overrides) if overrides else None
            records = simulate(reqs, SimConfig(replicas=replicas, policy=policy, policy_config=cfg,
                                               num_pages=args.num_pages), cost)
            s = summarize(records)
            rows.append({"replicas": replicas, "time_scale": scale, "variant": label,
                         "mean_latency": s["mean_latency"], "p99_latency": s["p99_latency"],
                         "mean_ttft": s["mean_ttft"], "p99_ttft": s["p99_ttft"], "hit_ratio": s["hit_ratio"],
                         **breakdown(records)})
            print(f"x{replicas} time_scale {scale} {label}: mean {s['mean_latency']:.2f} p99 {s['p99_latency']:.1f}",
                  flush=True)
    doc = {"meta": {**source_revision(), "device": f"simulated from {Path(args.cost_model).name}",
                    "workload": f"mooncake, first {args.requests} rows", "num_pages": args.num_pages,
                    "scheduler": "preble sim defaults (2,048-token passes)"},
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
