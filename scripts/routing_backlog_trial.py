"""A trial of the default policy with the backlog part of its work term, against the default as it
is and the peers' figures in the committed grids, at every point of the grids with one seed.

The default charges each second of compute it adds to a worker one second of later requests'
waiting: the M/M/1 externality at 50% utilisation, a steady state. While a worker has a backlog
(a cold start, a burst) every request that arrives before the backlog drains waits behind the new
work too: the backlog's seconds times the arrival rate, over 1 - u. Priced per request without it,
the default recomputes a prefix elsewhere whenever the holder's queue is longer than the copy, and
the copies lengthen every queue (`LatencyConfig.backlog`, `latency.work_weight`).

    python scripts/routing_backlog_trial.py --jobs 2 --out results/routing/backlog_trial.json
    python scripts/routing_backlog_trial.py --trial fleet --jobs 2 --out results/routing/backlog_fleet_trial.json

`--grids A,B --seeds 0,1,2` runs other grids (e.g. a three-seed one) at each of the seeds.
`--trial fleet` reads the fleet's shortest queue instead of the worker's own: a later arrival that
can go where less is queued does not wait behind the new work, so a copy made to relieve one hot
worker is charged only what every worker's queue would make it wait anyway. `--rows-from FILE`
recomputes the leaderboard from a trial file's rows.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from preble.bench.compare_config import Variant
from preble.bench.grid import leaderboard
from preble.bench.policy_trial import peers, run_cell
from preble.bench.provenance import source_revision
from preble.core.routing import DEFAULT_POLICY

TRIALS = {  # --trial: whose queue the backlog part reads
    "worker": Variant("latency + backlog", DEFAULT_POLICY, overrides={"backlog": True}),
    "fleet": Variant("latency + fleet backlog", DEFAULT_POLICY, overrides={"backlog": True, "backlog_fleet": True}),
}
GRIDS = ("results/routing/grid_h200_2.json", "results/routing/grid_h200_4_16_all.json",
         "results/routing/grid_paper_ablation.json", "results/routing/grid_h200_32_all.json",
         "results/routing/grid_h200_64.json")


def cells(grids: tuple[str, ...], seeds: tuple[int, ...]) -> list[tuple[str, str, int, str, int]]:
    """(grid, workload, replicas, memory, seed) of every cell and seed, the longest runs (most
    replicas) first."""
    found = [(g, r["workload"], r["replicas"], r["memory"], s) for g in grids
             for r in json.loads(Path(g).read_text())["rates"] for s in seeds]
    return sorted(found, key=lambda c: -c[2])


def boards(rows: list[dict], trial: str, grids: tuple[str, ...], seeds: tuple[int, ...]) -> dict:
    """The default and the trial against the grids' other policies (seed means), over every point
    at once (no two grids share a point)."""
    others = [r for g in grids for r in peers(g, seeds=seeds)]
    reference = sorted({r["policy"] for r in others})
    return {p: leaderboard({"rows": others + [r for r in rows if r["policy"] == p]}, reference + [p])[p]
            for p in (DEFAULT_POLICY, trial)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--trial", choices=TRIALS, default="worker",
                    help="the worker's own queue, or the fleet's shortest (a later arrival waits that anywhere)")
    ap.add_argument("--grids", default=",".join(GRIDS), help="comma-separated grid files (default: the single-seed grids)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, each among the grids' own")
    ap.add_argument("--rows-from", type=Path, help="take the rows of this trial file instead of running them")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.rows_from is not None:
        doc = json.loads(args.rows_from.read_text())
        meta = doc["meta"]
        doc["leaderboard"] = boards(doc["rows"], meta["trial"], tuple(meta["grids"]), tuple(meta.get("seeds", (0,))))
    else:
        trial, grids = TRIALS[args.trial], tuple(args.grids.split(","))
        seeds = tuple(int(s) for s in args.seeds.split(","))
        revision = source_revision()
        started = datetime.now(UTC)
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = [row for cell in pool.map(partial(run_cell, trial), *zip(*cells(grids, seeds))) for row in cell]
        doc = {"meta": {**revision, "date": started.isoformat(timespec="seconds"), "device": "cpu",
                        "wall_s": (datetime.now(UTC) - started).total_seconds(), "grids": list(grids),
                        "seeds": list(seeds), "trial": trial.label},
               "rows": rows, "leaderboard": boards(rows, trial.label, grids, seeds)}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({p: {k: v for k, v in b.items() if not isinstance(v, (list, dict))}
                      for p, b in doc["leaderboard"].items()}, indent=1))


if __name__ == "__main__":
    main()
