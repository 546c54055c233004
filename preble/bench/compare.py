"""The paper's comparison, run in the simulator: workloads x routing policies x rates x replicas.

Every point plays the same requests with the same Poisson arrivals under each policy, on
replicas that run the real local scheduler, radix cache and KV accounting with a measured cost
model (`preble.sim`). Rates climb a geometric ladder from a light load (one where round_robin's
mean latency is within `light_latency` x the unloaded one) until round_robin saturates (its p99
latency passes `saturation_factor` times its light-load value), plus one step beyond. Three further studies reuse the knee rate of each workload: the local queue
policies, an ablation of E2 in the paper's order, and scaling to many replicas at the same
load per replica.

Each run's statistics leave out its first `warmup_fraction` of arrivals: they meet cold caches,
which would otherwise dominate the tail of short runs. Text workloads are tokenised once with the given tokenizer (the demo model's by default); the
cost model, not the tokenizer, sets the model's speed.

This module plans and runs the comparison, merges runs and checks the targets; the rest is in
`compare_config` (what runs), `prepare` (workloads as token ids), `sim_runner` (points and
ladders), `sim_pool` (the processes) and `compare_report` (Markdown and plots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.cost_model import CostModel
from .compare_config import ABLATION_VARIANTS, LOCAL_VARIANTS, CompareConfig, Variant
from .prepare import Prepared, capacity, load_tokenizer, prepare, tokenizer_path, unloaded_latency
from .provenance import source_revision
from .sim_pool import registry, spawn_pool
from .sim_runner import Runner


def _prepare_task(cfg: CompareConfig, name: str, tokenizer: str) -> Prepared:
    scaling = name in cfg.scaling_workloads and bool(cfg.scaling_replicas)
    n = max(cfg.max_requests, cfg.scaling_max_requests if scaling else 0)
    return prepare(name, n, load_tokenizer(tokenizer), cfg.seed, cfg.max_model_len - 1024)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _climb_task(cfg: CompareConfig, name: str, replicas: int) -> tuple[list[dict[str, Any]], float | None]:
    return Runner(cfg, registry.get(name), CostModel.load(cfg.cost_model)).climb(replicas, _log)


def _point_task(cfg: CompareConfig, name: str, study: str, replicas: int, rate: float, variant: Variant,
                n: int | None) -> dict[str, Any]:
    row = Runner(cfg, registry.get(name), CostModel.load(cfg.cost_model)).point(replicas, rate, variant, n)
    _log(f"{name} {study} x{replicas} {variant.label}: mean {row['mean_latency']:.3g} s "
         f"p99 {row['p99_latency']:.3g} s")
    return {"study": study, **row}


def _studies(cfg: CompareConfig, name: str, knees: dict[int, float | None]) -> list[tuple]:
    """The study points of one workload: (study, replicas, rate, variant, requests)."""
    out = []
    knee = knees.get(cfg.study_replicas)
    if knee is not None:
        out += [("local", cfg.study_replicas, knee, v, None) for v in LOCAL_VARIANTS]
        out += [("ablation", cfg.study_replicas, knee, v, None) for v in ABLATION_VARIANTS]
    top = max(cfg.replicas)
    if name in cfg.scaling_workloads and knees.get(top) is not None:
        per_replica = knees[top] / top
        for r in cfg.scaling_replicas:
            n = min(cfg.scaling_max_requests, round(per_replica * r * cfg.duration_s))
            out += [("scaling", r, per_replica * r, Variant(p, p), n) for p in cfg.scaling_policies]
    return out


def run(cfg: CompareConfig) -> dict[str, Any]:
    """Prepare the workloads, run every ladder, then every study point, `jobs` processes at a time."""
    tokenizer = tokenizer_path(cfg)
    with spawn_pool(cfg.jobs) as pool:
        names = cfg.workloads
        prepared = dict(zip(names, pool.map(_prepare_task, [cfg] * len(names), names, [tokenizer] * len(names))))
    ladders = [(w, r) for w in cfg.workloads for r in cfg.replicas]
    others = [p for p in cfg.policies if p != "round_robin"]
    with spawn_pool(cfg.jobs, prepared) as pool:
        climbs = dict(zip(ladders, pool.map(_climb_task, *zip(*[(cfg, w, r) for w, r in ladders]))))
        knees = {w: {r: climbs[w, r][1] for r in cfg.replicas} for w in cfg.workloads}
        grid = [(cfg, w, "ladder", r, row["rate"], Variant(p, p), None)
                for (w, r), (rows, _) in climbs.items() for row in rows for p in others]
        points = [(cfg, w, *pt) for w in cfg.workloads for pt in _studies(cfg, w, knees[w])]
        done = list(pool.map(_point_task, *zip(*(grid + points)))) if grid or points else []
    ladder_rows, studied = done[:len(grid)], done[len(grid):]
    cost = CostModel.load(cfg.cost_model)
    parts = []
    for w in cfg.workloads:
        prep = prepared[w]
        part = {"workload": w, "stats": prep.stats, "capacity_per_replica": capacity(prep, cost),
                "unloaded_latency": unloaded_latency(prep, cost), "knees": knees[w],
                "rows": [row for r in cfg.replicas for row in climbs[w, r][0]]
                + [{k: v for k, v in row.items() if k != "study"}
                   for row, pt in zip(ladder_rows, grid) if pt[1] == w]}
        for study in ("local", "ablation", "scaling"):
            part[study] = [{k: v for k, v in row.items() if k != "study"}
                           for row, pt in zip(studied, points) if pt[1] == w and row["study"] == study]
        parts.append(part)
    meta = {**source_revision(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": f"simulated from {Path(cfg.cost_model).name}", "cost_model": cost.to_dict()}
    return {"meta": meta, "config": asdict(cfg), "workloads": parts}


def merged(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of one configuration over different workloads (e.g. on several
    machines); the first run's metadata, with every run's commit and date."""
    first = docs[0]
    ignore = {"workloads", "jobs"}
    for d in docs[1:]:
        a = {k: v for k, v in first["config"].items() if k not in ignore}
        b = {k: v for k, v in d["config"].items() if k not in ignore}
        if a != b:
            raise ValueError("the runs to merge have different configurations")
    parts = [w for d in docs for w in d["workloads"]]
    config = {**first["config"], "workloads": [w["workload"] for w in parts]}
    meta = {**first["meta"], "runs": [{k: d["meta"][k] for k in ("commit", "date")} for d in docs]}
    return {"meta": meta, "config": config, "workloads": parts}


# ------------------------------------------------------------------------------ the targets


def row_at(rows: list[dict], rate: float, policy: str) -> dict | None:
    """The row of `policy` at `rate`, if any."""
    return next((r for r in rows if r["rate"] == rate and r["policy"] == policy), None)


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's three targets, per replica count, from the comparison's rows.

    - at the knee (round_robin's p99 past saturation_factor x light load), e2's mean and p99
      latency are >= 2x lower than round_robin's on at least 4 of the 5 workloads;
    - at every rate, e2's mean latency is within 5% of the best baseline's;
    - on toolbench (Zipf tool popularity) at the knee, e2's p99 is >= 1.3x lower than
      cache_aware's."""
    out: dict[str, Any] = {}
    replicas = sorted({r["replicas"] for w in doc["workloads"] for r in w["rows"]})
    for n in replicas:
        knee_gain, worst, toolbench = {}, {}, None
        for w in doc["workloads"]:
            rows = [r for r in w["rows"] if r["replicas"] == n]
            knee = w["knees"].get(n, w["knees"].get(str(n)))
            if knee is not None:
                e2, rr = row_at(rows, knee, "e2"), row_at(rows, knee, "round_robin")
                if e2 and rr:
                    knee_gain[w["workload"]] = {"rate": knee,
                                                "mean": rr["mean_latency"] / e2["mean_latency"],
                                                "p99": rr["p99_latency"] / e2["p99_latency"]}
                ca = row_at(rows, knee, "cache_aware")
                if w["workload"] == "toolbench" and e2 and ca:
                    toolbench = ca["p99_latency"] / e2["p99_latency"]
            ratios = []
            for rate in sorted({r["rate"] for r in rows}):
                e2 = row_at(rows, rate, "e2")
                base = [r["mean_latency"] for r in rows if r["rate"] == rate and r["policy"] != "e2"]
                if e2 and base:
                    ratios.append((e2["mean_latency"] / min(base), rate))
            if ratios:
                worst[w["workload"]] = dict(zip(("ratio", "rate"), max(ratios)))
        wins = [k for k, g in knee_gain.items() if g["mean"] >= 2 and g["p99"] >= 2]
        out[str(n)] = {
            "knee_gain": knee_gain, "workloads_2x": wins, "met_2x_on_4": len(wins) >= 4,
            "worst_vs_best_baseline": worst,
            "met_within_5pct": all(v["ratio"] <= 1.05 for v in worst.values()) if worst else False,
            "toolbench_p99_vs_cache_aware": toolbench,
            "met_toolbench_1_3x": toolbench is not None and toolbench >= 1.3,
        }
    return out
