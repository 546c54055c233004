"""A trial of the default policy with its eviction term on, against the default as it is and the
peers' figures in the committed grids, at every load of the grid cells where caches fill.

The default prices what a request computes and waits for, not what its pages push out of a full
cache: on a full worker a new prompt may evict a prefix that later requests reuse, and they pay
its prefill again. With `LatencyConfig.eviction` the policy charges that (`eviction.py`): the
pages beyond the worker's free ones (from its load reports) come from its LRU end, each evicted
node costing its prefill times its reuse there in the tree's window.

Caches fill only where a workload's distinct prompts outgrow the workers' KV: on the Mooncake trace
at every replica count (prompts of 12k tokens on average, most of them used once), and in the
paper's memory regime (15,200 pages a worker). So the trial runs every cell of the 8-replica grid
(both memory regimes, four workloads) and the Mooncake cells of the other grids, each load with the
grid's seed 0, and compares both rows with the best of the grid's other policies at that point.

    python scripts/routing_eviction_trial.py --out results/routing/eviction_trial.json
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

TRIAL = Variant("latency + eviction", DEFAULT_POLICY, overrides={"eviction": True})
ALL = None
GRIDS = {  # grid -> the workloads of its cells the trial runs (ALL: every cell)
    "results/routing/grid_paper_ablation.json": ALL,
    "results/routing/grid_h200_2.json": ("mooncake",),
    "results/routing/grid_h200_4_16_all.json": ("mooncake",),
    "results/routing/grid_h200_32_all.json": ("mooncake",),
    "results/routing/grid_h200_64.json": ("mooncake",),
}


def cells() -> list[tuple[str, str, int, str]]:
    """(grid, workload, replicas, memory) of every cell the trial runs."""
    return [(g, r["workload"], r["replicas"], r["memory"]) for g, workloads in GRIDS.items()
            for r in json.loads(Path(g).read_text())["rates"] if workloads is ALL or r["workload"] in workloads]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    revision = source_revision()
    started = datetime.now(UTC)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [row for cell in pool.map(partial(run_cell, TRIAL), *zip(*cells())) for row in cell]
    others = [r for g, w in GRIDS.items() for r in peers(g, w)]
    reference = sorted({r["policy"] for r in others})
    boards = {p: leaderboard({"rows": others + [r for r in rows if r["policy"] == p]}, reference + [p])[p]
              for p in (DEFAULT_POLICY, TRIAL.label)}
    doc = {"meta": {**revision, "date": started.isoformat(timespec="seconds"), "device": "cpu",
                    "wall_s": (datetime.now(UTC) - started).total_seconds(), "grids": list(GRIDS),
                    "trial": TRIAL.label},
           "rows": rows, "leaderboard": boards, "peers": reference}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
