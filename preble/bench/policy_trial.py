"""Trials of the default policy with one change, run at the points of committed grids: the default
and the trial at every load of a grid cell (seed 0 unless asked), and the grid's other policies'
rows there to compare both with (`scripts/routing_eviction_trial.py`; the backlog term's trial as of 9ba75a0)."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.cost_model import CostModel
from ..core.routing import DEFAULT_POLICY
from .compare_config import Variant
from .grid import config_of, prepare_workload
from .prepare import tokenizer_path
from .sim_runner import Runner


def run_cell(trial: Variant, grid: str, workload: str, replicas: int, memory: str, seed: int = 0) -> list[dict]:
    """Every load of one cell of `grid`, for the default and `trial` (arrivals of `seed`)."""
    doc = json.loads(Path(grid).read_text())
    cfg = config_of(doc)
    rates = next(r["rates"] for r in doc["rates"] if (r["workload"], r["replicas"], r["memory"]) == (workload, replicas, memory))
    runner = Runner(cfg.compare_config(memory, seed), prepare_workload(cfg, workload, tokenizer_path(cfg.base)),
                    CostModel.load(cfg.base.cost_model))
    rows = [{**runner.point(replicas, rate, v), "memory": memory, "seed": seed, "grid": grid}
            for rate in rates for v in (Variant(DEFAULT_POLICY, DEFAULT_POLICY), trial)]
    print(workload, replicas, memory, seed, [(r["policy"], round(r["mean_latency"], 3)) for r in rows], flush=True)
    return rows


def peers(grid: str, workloads: tuple[str, ...] | None = None, seeds: tuple[int, ...] = (0,)) -> list[dict]:
    """The grid's rows of `seeds` of its listed policies other than the default (of `workloads`
    only, if given)."""
    doc = json.loads(Path(grid).read_text())
    listed = set(doc["config"]["policies"]) - {DEFAULT_POLICY}
    return [{**r, "grid": grid} for r in doc["rows"] if r["policy"] in listed and r["seed"] in seeds
            and (workloads is None or r["workload"] in workloads)]
