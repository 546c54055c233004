"""A committed grid with the default policy measured again at this commit.

When only the default policy changed, its runs (and its ablations', which are the default with a
term off) are all that need running again: the other policies' rows are carried over from the
grid as it was, once a re-run of one of them (`CHECK_POLICY`) at every cell's highest load, and of
its capacity where the grid has one, reproduces the grid's figures exactly. The simulator is
deterministic, so that shows it and the peers simulate as they did; otherwise nothing is carried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from ..core.routing import DEFAULT_POLICY
from .compare_config import Variant
from .grid import (
    ABLATIONS,
    GridConfig,
    GridMismatch,
    config_of,
    grid_meta,
    ladder_task,
    point_key,
    point_task,
    prepare_workload,
    same_run,
    search_capacities,
)
from .prepare import tokenizer_path
from .sim_pool import map_until_deadline, spawn_pool

CHECK_POLICY = "cache_aware"  # the peer re-run to show the carried rows still hold


def _default_labels(config: dict[str, Any]) -> set[str]:
    """The labels of the grid's runs of the default policy: itself and its ablations."""
    return {DEFAULT_POLICY} | {a["label"] for a in config.get("ablations", []) if a["policy"] == DEFAULT_POLICY}


def rerun(doc: dict[str, Any], jobs: int, log: Callable[[str], None] = print, check: str = CHECK_POLICY,
          tokenizer: str | None = None) -> dict[str, Any]:
    """`doc` with its default-policy rows and capacities measured again (the ablations as they are
    now, where it had any), the rest carried over once `check`'s re-runs reproduce them.
    `tokenizer`: the folder that tokenised its text workloads (default: the demo model's)."""
    config = doc["config"]
    cfg = _grid_config(doc, jobs, tokenizer)
    if check not in cfg.policies:
        raise GridMismatch(f"the grid did not run {check!r}, the policy whose re-runs check its carried rows")
    revision = grid_meta(cfg)  # the tree as the runs start
    names = list(doc["workloads"])
    with spawn_pool(jobs) as pool:
        prepared = dict(zip(names, pool.map(prepare_workload, [cfg] * len(names), names,
                                            [tokenizer_path(cfg.base)] * len(names))))
    for w in names:
        if {**prepared[w].stats, "own_rate": prepared[w].own_rate} != doc["workloads"][w]:
            raise GridMismatch(f"workload {w!r} is prepared differently now (its requests' statistics differ)")
    default = [Variant(DEFAULT_POLICY, DEFAULT_POLICY), *(v for v in cfg.ablations if v.policy == DEFAULT_POLICY)]
    points = sorted({(point_key(r), r["seed"]) for r in doc["rows"]})
    tops = {}
    for (w, n, m, rate), _ in points:
        tops[w, n, m] = max(rate, tops.get((w, n, m), rate))
    checks = [(cfg, w, n, m, cfg.seeds[0], rate, Variant(check, check)) for (w, n, m), rate in tops.items()]
    tasks = [(cfg, w, n, m, seed, rate, v) for (w, n, m, rate), seed in points for v in default]
    log(f"{len(checks)} check runs of {check}, {len(tasks)} runs of the default")
    rows = map_until_deadline(jobs, prepared, point_task, checks + tasks, time.monotonic(), None)
    _check_rows(doc, rows[:len(checks)])
    capacity, checked_capacity = _rerun_capacity(doc, cfg, prepared, default, check)
    labels = _default_labels(config)
    carried = [r for r in doc["rows"] if r["policy"] not in labels]
    meta = {**revision, "runs": len(tasks), "runs_planned": len(tasks),
            "rerun": {"policies": [v.label for v in default], "checked_runs": len(checks) + checked_capacity,
                      "check_policy": check,
                      "carried_from": {k: doc["meta"][k] for k in ("commit", "dirty", "diff_sha256", "date",
                                                                    "host_cpus", "merged_from") if k in doc["meta"]}}}
    return {"meta": meta, "config": {**config, "ablations": [asdict(v) for v in cfg.ablations], "jobs": jobs},
            "workloads": doc["workloads"], "rates": doc["rates"], "rows": carried + rows[len(checks):],
            "capacity": [c for c in doc.get("capacity", []) if c["policy"] not in labels] + capacity}


def _grid_config(doc: dict[str, Any], jobs: int, tokenizer: str | None) -> GridConfig:
    """The grid's configuration, with today's ablations where it had any."""
    config, base = doc["config"], config_of(doc).base
    listed = {k: tuple(config[k]) for k in ("workloads", "replicas", "memories", "policies", "seeds",
                                            "capacity_workloads", "capacity_replicas")}
    return GridConfig(**listed, base=replace(base, tokenizer=tokenizer),
                      ablations=ABLATIONS if config.get("ablations") else (), slo_factor=config["slo_factor"],
                      capacity_steps=config["capacity_steps"], traces=tuple(config["traces"]), jobs=jobs)


def _check_rows(doc: dict[str, Any], checked: list[dict[str, Any]]) -> None:
    old = {(point_key(r), r["seed"], r["policy"]): r for r in doc["rows"]}
    differ = [k for r in checked if not same_run(r, old[k := (point_key(r), r["seed"], r["policy"])])]
    if differ:
        raise GridMismatch(f"{len(differ)} of {len(checked)} check runs differ from the grid's, e.g. {differ[0]}: "
                           "the simulator or the peers changed, so their rows cannot be carried over")


def _rerun_capacity(doc: dict[str, Any], cfg, prepared: dict, default: list[Variant],
                    check: str) -> tuple[list[dict[str, Any]], int]:
    """The default variants' capacities at the grid's capacity cells, after `check`'s capacity is
    found again as the grid has it; and how many check searches ran."""
    entries = doc.get("capacity", [])
    if not entries:
        return [], 0
    ladders = {(r["workload"], r["replicas"], r["memory"]): r["rates"] for r in doc["rates"]}
    cells = list(dict.fromkeys((c["workload"], c["replicas"], c["memory"]) for c in entries))
    with spawn_pool(cfg.jobs, prepared) as pool:
        # A search's bracket is its cell's ladder, which the grid keeps only for its points: climb
        # the others again (round_robin's, deterministic; the check below fails if one differs).
        climb = [c for c in cells if c not in ladders]
        if climb:
            ladders.update(zip(climb, pool.map(ladder_task, *zip(*[(cfg, *c) for c in climb]))))
        found = search_capacities(cfg, pool, ladders, cells, [Variant(check, check), *default])
    old = {(c["workload"], c["replicas"], c["memory"], c["policy"]): c for c in entries}
    checked = [c for c in found if c["policy"] == check]
    differ = [c for c in checked if not same_run(c, old[c["workload"], c["replicas"], c["memory"], check])]
    if differ:
        raise GridMismatch(f"{check}'s capacity at {differ[0]['workload']} x{differ[0]['replicas']} differs from "
                           "the grid's: the simulator or the peers changed")
    return [c for c in found if c["policy"] != check], len(checked)
