"""The routing grid: every policy at every point of workloads x replicas x loads x memory x seeds,
in the simulator, with a leaderboard of each policy's latency against the best at each point.

A point is (workload, replicas, KV memory regime, load, seed). Loads come from round_robin's
rate ladder at that point (`sim_runner.Runner.climb`: from a light load until its p99 passes the
saturation factor, one step beyond), plus, for traces, the trace's own rate and twice it (its
arrivals compressed, their burstiness kept). The ladder is climbed once per (workload,
replicas, memory) with the first seed; every seed then plays the same rates with its own
arrivals (Poisson), or for a trace the same rows with their own token contents (the trace's timing
and reuse are its own, so its seeds differ little). Each run's statistics leave out its first
`warmup_fraction` of arrivals (cold caches).

Capacity at a TTFT SLO: for each policy, the highest rate whose p90 TTFT stays under
`slo_factor` x the unloaded TTFT of the workload's mean request, found by bisection on the rate.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.cost_model import CostModel
from ..core.routing import DEFAULT_POLICY, POLICIES
from .compare_config import CompareConfig, Variant
from .prepare import Prepared, load_tokenizer, prepare, tokenizer_path
from .provenance import source_revision
from .sim_pool import map_until_deadline, registry, spawn_pool
from .sim_runner import Runner

PEERS = tuple(p for p in POLICIES if p != DEFAULT_POLICY)  # every other registered policy
# KV pages per replica. h200: the Llama-3-8B cost model's GPU at 0.85 of 141 GB (704k tokens).
# paper: Mistral-7B on a 48 GB GPU as in the Preble paper: 0.9 x 48 GiB - 14.5 GB of bf16 weights
# = 31.9 GB; 128 KiB of KV per token (32 layers x 8 KV heads x 128 dims x K,V x 2 bytes) gives
# 243k tokens, 15,200 pages of 16.
MEMORY = {"h200": 44_000, "paper": 15_200}
# The Zipf shared-prefix synthetic: 64 system prompts of 4k tokens, popularity Zipf(1.1).
ZIPF_PARAMS = dict(groups=64, system_len=4096, question_len=256, output_len=128, popularity="zipf")


@dataclass(frozen=True)
class GridConfig:
    workloads: tuple[str, ...] = ("toolbench", "agent", "programming", "videoqa", "loogle", "mooncake", "zipf")
    replicas: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    memories: tuple[str, ...] = ("h200", "paper")
    policies: tuple[str, ...] = PEERS + (DEFAULT_POLICY,)
    ablations: tuple[Variant, ...] = ()  # extra variants run at every point (e.g. the default minus a term)
    seeds: tuple[int, ...] = (0, 1, 2)
    traces: tuple[str, ...] = ("mooncake",)  # workloads replayed with their own arrival times
    capacity_workloads: tuple[str, ...] = ("mooncake",)
    capacity_replicas: tuple[int, ...] = (8, 16)
    slo_factor: float = 5.0  # the TTFT SLO: this times the unloaded TTFT of the mean request
    capacity_steps: int = 7  # bisection steps of the capacity search
    base: CompareConfig = field(default_factory=lambda: CompareConfig(
        cost_model="results/cost_models/h200_llama3-8b.json", max_model_len=131_072, duration_s=120.0,
        min_requests=400, max_requests=3000, max_rates=6))
    jobs: int = 2
    deadline_s: float | None = None  # stop starting runs this long after the start; the report says what ran
    known_rates: tuple[tuple[tuple[str, int, str], tuple[float, ...]], ...] = ()  # ladders already climbed

    def compare_config(self, memory: str, seed: int) -> CompareConfig:
        return replace(self.base, num_pages=MEMORY[memory], seed=seed)

    def variants(self) -> list[Variant]:
        return [Variant(p, p) for p in self.policies] + list(self.ablations)


def config_of(doc: dict[str, Any]) -> GridConfig:
    """The configuration a grid file's runs used, as far as re-running one of them needs: its
    base CompareConfig (lists back to tuples; the tokenizer found again on this machine)."""
    base = doc["config"]["base"]
    kwargs = {f.name: tuple(base[f.name]) if isinstance(base[f.name], list) else base[f.name]
              for f in fields(CompareConfig) if f.name in base}
    return GridConfig(base=replace(CompareConfig(**kwargs), tokenizer=None))


def _workload_args(name: str) -> tuple[str, dict]:
    return ("shared_prefix", ZIPF_PARAMS) if name == "zipf" else (name, {})


def prepare_workload(cfg: GridConfig, name: str, tokenizer: str) -> Prepared:
    """A grid workload's requests, prepared once and sized by `cfg.base.max_requests` (a trace
    keeps its own arrival times)."""
    kind, params = _workload_args(name)
    prep = prepare(kind, cfg.base.max_requests, load_tokenizer(tokenizer), 0,
                   cfg.base.max_model_len - 1024, params=params, trace_arrivals=name in cfg.traces)
    return replace(prep, name=name)


def _runner(cfg: GridConfig, workload: str, memory: str, seed: int) -> Runner:
    return Runner(cfg.compare_config(memory, seed), registry.get(workload), CostModel.load(cfg.base.cost_model))


def trace_rates(own_rate: float | None, replicas: int) -> list[float]:
    """A trace's own rate and twice it, taken as 8 replicas' load (its cluster size) and scaled to
    `replicas`; none for a workload without arrival times."""
    if own_rate is None:
        return []
    per_replica = own_rate / 8
    return [per_replica * replicas, 2 * per_replica * replicas]


def ladder_task(cfg: GridConfig, workload: str, replicas: int, memory: str) -> list[float]:
    """The rates of a point: round_robin's ladder, plus a trace's own rate and twice it."""
    runner = _runner(cfg, workload, memory, cfg.seeds[0])
    rows, _ = runner.climb(replicas, lambda _: None)
    return sorted({r["rate"] for r in rows} | set(trace_rates(runner.prep.own_rate, replicas)))


def point_task(cfg: GridConfig, workload: str, replicas: int, memory: str, seed: int, rate: float,
                variant: Variant) -> dict[str, Any]:
    row = _runner(cfg, workload, memory, seed).point(replicas, rate, variant)
    return {**row, "memory": memory, "seed": seed}


def _capacity_task(cfg: GridConfig, workload: str, replicas: int, memory: str, variant: Variant,
                   lo: float, hi: float) -> dict[str, Any]:
    """Bisection for the highest rate whose p90 TTFT meets the SLO (lo meets it, hi does not)."""
    runner = _runner(cfg, workload, memory, cfg.seeds[0])
    slo = cfg.slo_factor * unloaded_ttft(runner.prep, runner.cost)

    def meets(rate: float) -> bool:
        return runner.point(replicas, rate, variant)["p90_ttft"] <= slo

    if not meets(lo):
        return {"policy": variant.label, "capacity": 0.0, "slo_s": slo}
    if meets(hi):
        return {"policy": variant.label, "capacity": hi, "slo_s": slo, "open": True}
    for _ in range(cfg.capacity_steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return {"policy": variant.label, "capacity": lo, "slo_s": slo}


def unloaded_ttft(prep: Prepared, cost: CostModel) -> float:
    """TTFT of the workload's mean-length prompt alone on an empty replica."""
    mean = sum(map(len, prep.prompts)) / len(prep.prompts)
    return cost.prefill_time(round(mean))


def run(cfg: GridConfig, log: Callable[[str], None] = print,
        checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The grid: prepare the workloads, climb the ladders, run every point, then the capacity
    search. `checkpoint` receives the document once the points are done (before the search)."""
    start = time.monotonic()
    tokenizer = tokenizer_path(cfg.base)
    names = list(cfg.workloads)
    with spawn_pool(cfg.jobs) as pool:
        prepared = dict(zip(names, pool.map(prepare_workload, [cfg] * len(names), names, [tokenizer] * len(names))))
    log(f"prepared {', '.join(names)}")
    cells = [(w, r, m) for w in names for r in cfg.replicas for m in cfg.memories]
    known = {cell: list(rs) for cell, rs in cfg.known_rates}
    needed = list(dict.fromkeys(cells + _capacity_cells(cfg)))
    climb = [c for c in needed if c not in known]
    with spawn_pool(cfg.jobs, prepared) as pool:
        climbed = dict(zip(climb, pool.map(ladder_task, *zip(*[(cfg, *c) for c in climb])))) if climb else {}
    ladders = {**known, **climbed}
    rates = {c: ladders[c] for c in cells}
    log(f"ladders: {len(climb)} climbed, {len(needed) - len(climb)} given; {sum(map(len, rates.values()))} "
        "loads of the grid's points")
    points = [(cfg, w, r, m, s, rate, v) for (w, r, m), rs in rates.items() for rate in rs
              for s in cfg.seeds for v in cfg.variants()]
    rows = map_until_deadline(cfg.jobs, prepared, point_task, points, start, cfg.deadline_s)
    complete = len(rows) == len(points)
    log(f"{len(rows)} of {len(points)} runs done" + ("" if complete else "; deadline: capacity search skipped"))
    doc = {"meta": {**grid_meta(cfg), "runs": len(rows), "runs_planned": len(points)}, "config": _config_dict(cfg),
           "workloads": {w: {**prepared[w].stats, "own_rate": prepared[w].own_rate} for w in names},
           "rates": [{"workload": w, "replicas": r, "memory": m, "rates": rs} for (w, r, m), rs in rates.items()],
           "rows": _whole_points(rows, len(cfg.variants())), "capacity": []}
    if checkpoint is not None:
        checkpoint(doc)
    if complete:
        with spawn_pool(cfg.jobs, prepared) as pool:
            doc["capacity"] = search_capacities(cfg, pool, ladders)
    return doc


def _whole_points(rows: list[dict], variants: int) -> list[dict]:
    """The rows of points (and seeds) every variant ran at."""
    count = defaultdict(int)
    for r in rows:
        count[point_key(r), r["seed"]] += 1
    return [r for r in rows if count[point_key(r), r["seed"]] == variants]


def _capacity_cells(cfg: GridConfig) -> list[tuple[str, int, str]]:
    """The (workload, replicas, memory) cells of the capacity search; they need a ladder (its
    bracket), not the grid's points: `--replicas` need not include them."""
    return [(w, r, m) for w in cfg.capacity_workloads if w in cfg.workloads
            for r in cfg.capacity_replicas for m in cfg.memories]


def search_capacities(cfg: GridConfig, pool, ladders: dict, cells: Sequence[tuple[str, int, str]] | None = None,
                variants: Sequence[Variant] | None = None) -> list[dict[str, Any]]:
    """Each variant's capacity at each cell (default: the grid's cells and variants), searched
    between a quarter of the cell's lowest ladder rate and twice its highest."""
    jobs = []
    for w, r, m in _capacity_cells(cfg) if cells is None else cells:
        ladder = ladders[w, r, m]
        lo, hi = ladder[0] / 4, ladder[-1] * 2
        jobs += [(cfg, w, r, m, v, lo, hi) for v in (cfg.variants() if variants is None else variants)]
    done = list(pool.map(_capacity_task, *zip(*jobs))) if jobs else []
    return [{"workload": j[1], "replicas": j[2], "memory": j[3], **d} for j, d in zip(jobs, done)]


def _config_dict(cfg: GridConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["ablations"] = [asdict(v) for v in cfg.ablations]
    d["known_rates"] = bool(cfg.known_rates)  # the loads themselves are in the document's "rates"
    d["memory_pages"] = {m: MEMORY[m] for m in cfg.memories}
    d["zipf_params"] = ZIPF_PARAMS
    return d


def grid_meta(cfg: GridConfig) -> dict[str, Any]:
    return {**source_revision(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": f"simulated from {Path(cfg.base.cost_model).name}",
            "cost_model": CostModel.load(cfg.base.cost_model).to_dict(), "host_cpus": os.cpu_count()}


class GridMismatch(ValueError):
    """Grid documents that cannot be merged: another commit or another configuration."""


# What must agree for two grids' points to be comparable (the rest says which points ran).
# A memory regime's pages must agree where both grids have it; grids of different regimes merge.
_SAME_CONFIG = ("policies", "ablations", "seeds", "traces", "base", "zipf_params", "slo_factor", "capacity_steps")


# Fields of the base CompareConfig that no grid run reads: the comparison's own plan (its
# workloads, policies, replica counts and studies), its process count, and the tokenizer's path
# (where it lives is no matter; what it makes of the workloads is checked on their statistics).
_UNREAD_BASE = ("tokenizer", "workloads", "policies", "replicas", "scaling_replicas", "scaling_workloads",
                "scaling_policies", "scaling_max_requests", "study_replicas", "jobs")


def _comparable(value: Any) -> Any:
    return {k: v for k, v in value.items() if k not in _UNREAD_BASE} if isinstance(value, dict) else value


def same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal results, floats to rounding (Python 3.12's `sum` rounds differently from 3.11's)."""
    if a.keys() != b.keys():
        return False
    return all(math.isclose(x, b[k], rel_tol=1e-9, abs_tol=1e-12) if isinstance(x, float) else x == b[k]
               for k, x in a.items())


def _check_agreement(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Grids of two commits merge only where they ran a point in common and every run of it gave
    the same result (the simulator is deterministic: what changed between them is not its code)."""
    rows_a = {(point_key(r), r["seed"], r["policy"]): r for r in a["rows"]}
    shared = [(k, r) for r in b["rows"] if (k := (point_key(r), r["seed"], r["policy"])) in rows_a]
    if not shared:
        raise GridMismatch(f"commits differ ({a['meta']['commit']}, {b['meta']['commit']}) and no run in "
                           "common shows that they simulate alike")
    differ = [k for k, r in shared if not same_run(r, rows_a[k])]
    if differ:
        raise GridMismatch(f"commits differ ({a['meta']['commit']}, {b['meta']['commit']}) and {len(differ)} of "
                           f"{len(shared)} runs in common give other results, e.g. {differ[0]}")


def merge(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One grid from several run with the same configuration (e.g. the points one run's deadline
    cut, run later), at one commit or at commits shown to agree (`_check_agreement`): each
    point's rows from the first document that has it."""
    first = docs[0]
    for d in docs[1:]:
        if (d["meta"]["commit"], d["meta"].get("dirty")) != (first["meta"]["commit"], first["meta"].get("dirty")):
            _check_agreement(first, d)
        for k in _SAME_CONFIG:
            if _comparable(d["config"].get(k)) != _comparable(first["config"].get(k)):
                raise GridMismatch(f"configurations differ in {k!r}")
        pages, first_pages = d["config"].get("memory_pages", {}), first["config"].get("memory_pages", {})
        for m in sorted(set(pages) & set(first_pages)):
            if pages[m] != first_pages[m]:
                raise GridMismatch(f"configurations differ in memory {m!r}: {first_pages[m]} and {pages[m]} pages")
        for w in set(d["workloads"]) & set(first["workloads"]):
            if d["workloads"][w] != first["workloads"][w]:
                raise GridMismatch(f"workload {w!r} was prepared differently (its requests' statistics differ)")
    rows, seen_points = [], set()
    for d in docs:
        points = {(point_key(r), r["seed"]) for r in d["rows"]}
        rows += [r for r in d["rows"] if (point_key(r), r["seed"]) not in seen_points]
        seen_points |= points
    rates = {(r["workload"], r["replicas"], r["memory"]): r for d in docs for r in reversed(d["rates"])}
    variants = len(first["config"]["policies"]) + len(first["config"].get("ablations", []))
    planned = sum(len(r["rates"]) for r in rates.values()) * len(first["config"]["seeds"]) * variants
    meta = {**first["meta"], "date": max(d["meta"]["date"] for d in docs), "runs": len(rows),
            "runs_planned": planned,
            "merged_from": [{k: d["meta"].get(k) for k in ("commit", "date", "host_cpus", "runs", "runs_planned")}
                            for d in docs]}
    union = {k: list(dict.fromkeys(x for d in docs for x in d["config"].get(k, []))) for k in ("workloads", "memories")}
    pages = {m: n for d in reversed(docs) for m, n in d["config"].get("memory_pages", {}).items()}
    return {"meta": meta, "config": {**first["config"], **{k: v for k, v in union.items() if v}, "memory_pages": pages},
            "workloads": {k: v for d in reversed(docs) for k, v in d["workloads"].items()},
            "rates": list(rates.values()), "rows": rows,
            "capacity": [c for d in docs for c in d.get("capacity", [])]}


# ------------------------------------------------------------------------------ leaderboard


def ladders(doc: dict[str, Any]) -> tuple[tuple[tuple[str, int, str], tuple[float, ...]], ...]:
    """A grid document's climbed ladders, for a later grid that runs the same loads without
    climbing them again (a ladder is a chain of runs, each waiting on the one before)."""
    return tuple(((r["workload"], r["replicas"], r["memory"]), tuple(r["rates"])) for r in doc["rates"])


def point_key(row: dict) -> tuple:
    return (row["workload"], row["replicas"], row["memory"], row["rate"])


def averaged(rows: Sequence[dict]) -> dict[tuple, dict[str, dict[str, float]]]:
    """point -> policy -> mean over seeds of mean and p99 latency, with their spread."""
    acc: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[point_key(r)][r["policy"]].append(r)
    out: dict[tuple, dict[str, dict[str, float]]] = {}
    for point, pols in acc.items():
        out[point] = {}
        for p, rs in pols.items():
            means, p99s = [x["mean_latency"] for x in rs], [x["p99_latency"] for x in rs]
            out[point][p] = {"mean": sum(means) / len(means), "p99": sum(p99s) / len(p99s),
                             "mean_spread": max(means) - min(means), "p99_spread": max(p99s) - min(p99s),
                             "seeds": len(rs)}
    return out


def knees(doc: dict[str, Any]) -> dict[tuple[str, int, str], tuple[float, bool]]:
    """Each (workload, replicas, memory) cell's round_robin knee as the ladder climb defines it
    (`Runner.climb`: the first rung whose p99 passes `saturation_factor` x the lightest rung's),
    with True; where the climb stopped at `max_rates` below it, the top rung, with False. The
    trace's own rates are not rungs."""
    factor = doc["config"]["base"]["saturation_factor"]
    p99 = {point: pols["round_robin"]["p99"] for point, pols in averaged(doc["rows"]).items()
           if "round_robin" in pols}
    out = {}
    for ladder in doc["rates"]:
        cell = (ladder["workload"], ladder["replicas"], ladder["memory"])
        extra = trace_rates(doc["workloads"].get(cell[0], {}).get("own_rate"), cell[1])
        rungs = [r for r in ladder["rates"] if r not in extra and (*cell, r) in p99]
        if not rungs:
            continue
        passed = [r for r in rungs if p99[(*cell, r)] > factor * p99[(*cell, rungs[0])]]
        out[cell] = (passed[0], True) if passed else (rungs[-1], False)
    return out


WITHIN_BEST = 1.03  # a policy within 3% of the best at a point counts as matching it


def leaderboard(doc: dict[str, Any], reference: Sequence[str] | None = None) -> dict[str, Any]:
    """Each policy's latency over the best policy's at every point (mean and p99, seed means):
    geometric means, worst cases, points within 3% of the best and points worse than round_robin.
    `reference`: the policies that define "best" (default: all)."""
    avg = averaged(doc["rows"])
    policies = sorted({p for pols in avg.values() for p in pols})
    ref = set(reference or policies)
    board: dict[str, Any] = {}
    for p in policies:
        ratios = {"mean": [], "p99": []}
        worst = {"mean": (0.0, None), "p99": (0.0, None)}
        within = worse_rr = n = 0
        for point, pols in avg.items():
            if p not in pols:
                continue
            n += 1
            ok = True
            for metric in ("mean", "p99"):
                best = min(v[metric] for q, v in pols.items() if q in ref or q == p)
                ratio = pols[p][metric] / best if best > 0 else 1.0
                ratios[metric].append(ratio)
                if ratio > worst[metric][0]:
                    worst[metric] = (ratio, point)
                ok = ok and ratio <= WITHIN_BEST
            within += ok
            rr = pols.get("round_robin")
            worse_rr += rr is not None and (pols[p]["mean"] > rr["mean"] or pols[p]["p99"] > rr["p99"])
        board[p] = {"points": n, "within_3pct": within, "worse_than_round_robin": worse_rr,
                    **{f"geomean_{m}": _geomean(v) for m, v in ratios.items()},
                    **{f"worst_{m}": {"ratio": w[0], "at": list(w[1]) if w[1] else None} for m, w in worst.items()}}
    return board


def _geomean(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else math.nan


def gain_over_best_other(doc: dict[str, Any], policy: str) -> dict[str, float]:
    """Geometric mean over points of (best other policy / `policy`), mean and p99 latency."""
    avg = averaged(doc["rows"])
    out = {}
    for metric in ("mean", "p99"):
        xs = [min(v[metric] for q, v in pols.items() if q != policy) / pols[policy][metric]
              for pols in avg.values() if policy in pols and len(pols) > 1 and pols[policy][metric] > 0]
        out[metric] = _geomean(xs)
    return out


# ------------------------------------------------------------------------------ report


ABLATIONS = (
    Variant("latency - wait", DEFAULT_POLICY, overrides={"wait": False}),
    Variant("latency - decode", DEFAULT_POLICY, overrides={"decode": False}),
    Variant("latency - interference", DEFAULT_POLICY, overrides={"interference": False}),
    Variant("latency - work", DEFAULT_POLICY, overrides={"work_weight": 0.0, "backlog": False}),
    Variant("latency - backlog", DEFAULT_POLICY, overrides={"backlog": False}),
    Variant("latency - cache", DEFAULT_POLICY, overrides={"cache_aware": False}),
    Variant("latency - copy credit", DEFAULT_POLICY, overrides={"copy_credit": False}),
)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def markdown(doc: dict[str, Any], default: str = DEFAULT_POLICY) -> str:
    """The grid's report: provenance, the leaderboard, the capacity search and every point (a grid
    of the capacity search alone has only the first and the third)."""
    ablations = {v["label"] for v in doc["config"].get("ablations", [])}
    lines = [f"# Routing grid ({doc['meta']['device']})", "", _provenance(doc), ""]
    if doc["rows"]:
        lines += _leaderboard_section(doc, default, ablations)
    lines += _capacity_table(doc)
    if doc["rows"]:
        lines += _per_workload(doc, default, ablations)
    return "\n".join(lines) + "\n"


def _provenance(doc: dict[str, Any]) -> str:
    meta, cfg = doc["meta"], doc["config"]
    cells = doc["rows"] or doc.get("capacity", [])
    return (f"commit {meta['commit']}"
            + (f" (uncommitted changes, diff {meta['diff_sha256']})" if meta.get("dirty") else
               " (a copy of the tree not checked against it)" if meta.get("dirty", False) is None else "")
            + _other_commits(meta)
            + f", {meta['date']}. Workloads {', '.join(dict.fromkeys(r['workload'] for r in cells))}; "
            f"replicas {sorted({r['replicas'] for r in cells})}; memory "
            + ", ".join(f"{m} ({p} pages of {cfg['base']['page_size']} tokens)" for m, p in cfg["memory_pages"].items())
            + f"; {len(cfg['seeds'])} seed(s) per point"
            + (f"; {meta['runs']} of {meta['runs_planned']} runs made before the deadline, whole points kept"
               if meta.get("runs", 0) < meta.get("runs_planned", 0) else "")
            + (f"; merged from {len(meta['merged_from'])} runs of the grid" if meta.get("merged_from") else "")
            + _carried(doc)
            + ". Ratios: a policy's latency over the best policy's at each point "
            "(seed means), among the policies listed first (ablations are compared to them, not the other way).")


def _leaderboard_section(doc: dict[str, Any], default: str, ablations: set[str]) -> list[str]:
    board = leaderboard(doc, reference=list(doc["config"]["policies"]))
    lines = ["## Leaderboard", "",
             "| policy | points | geomean mean | geomean p99 | worst mean (where) | worst p99 (where) | within 3% | worse than round_robin |",
             "|---|---:|---:|---:|---|---|---:|---:|"]
    for p, v in sorted(board.items(), key=lambda kv: (kv[0] in ablations, kv[1]["geomean_mean"])):
        wm, wp = v["worst_mean"], v["worst_p99"]
        lines.append(f"| {p} | {v['points']} | {v['geomean_mean']:.3f} | {v['geomean_p99']:.3f} | "
                     f"{wm['ratio']:.2f} ({_where(wm['at'])}) | {wp['ratio']:.2f} ({_where(wp['at'])}) | "
                     f"{v['within_3pct']} | {v['worse_than_round_robin']} |")
    gain = gain_over_best_other({**doc, "rows": [r for r in doc["rows"] if r["policy"] not in ablations]}, default)
    return lines + ["", f"{default}: geometric mean over points of (best other policy / {default}): "
                    f"mean {gain['mean']:.3f}, p99 {gain['p99']:.3f}.", ""]


def _other_commits(meta: dict[str, Any]) -> str:
    others = list(dict.fromkeys(m["commit"] for m in meta.get("merged_from", []) if m["commit"] != meta["commit"]))
    return f" and {', '.join(others)} (the runs they share gave the same results)" if others else ""


def _carried(doc: dict[str, Any]) -> str:
    """What a re-run (`grid_rerun`) measured at this commit and where the other rows come from."""
    rerun = doc["meta"].get("rerun")
    if not rerun:
        return ""
    source = rerun["carried_from"]
    commits = dict.fromkeys([source["commit"], *(m["commit"] for m in source.get("merged_from") or [])])
    return (f"; {', '.join(rerun['policies'])} run at this commit, the other {carried_rows(doc)} rows "
            f"carried over from the grid at {', '.join(commits)} ({rerun['checked_runs']} re-runs of "
            f"{rerun['check_policy']} reproduced its figures exactly)")


def carried_rows(doc: dict[str, Any]) -> int:
    """Rows a re-run (`grid_rerun`) carried over from the grid it re-ran (its own runs are the rest)."""
    return len(doc["rows"]) - doc["meta"]["runs"]


def _where(at: list | None) -> str:
    return "-" if not at else f"{at[0]} x{at[1]} {at[2]} {at[3]:.3g}/s"


def _capacity_table(doc: dict[str, Any]) -> list[str]:
    if not doc.get("capacity"):
        return []
    lines = ["## Capacity at the TTFT SLO", "",
             "Highest rate (requests/s) whose p90 TTFT stays under the SLO (5x the unloaded TTFT of the mean prompt).", "",
             "| workload | replicas | memory | SLO s | " + " | ".join(dict.fromkeys(c["policy"] for c in doc["capacity"])) + " |"]
    pols = list(dict.fromkeys(c["policy"] for c in doc["capacity"]))
    lines.append("|---|---:|---|---:|" + "---:|" * len(pols))
    cells = defaultdict(dict)
    for c in doc["capacity"]:
        cells[(c["workload"], c["replicas"], c["memory"])][c["policy"]] = c
    for (w, r, m), by in cells.items():
        slo = next(iter(by.values()))["slo_s"]
        lines.append(f"| {w} | {r} | {m} | {slo:.3g} | " + " | ".join(
            (_fmt(by[p]["capacity"]) + ("+" if by[p].get("open") else "")) if p in by else "-" for p in pols) + " |")
    return lines + [""]


def _per_workload(doc: dict[str, Any], default: str, ablations: set[str]) -> list[str]:
    """Per workload, replica count and memory: mean / p99 of round_robin, the best other policy and
    the default at every rate."""
    avg = averaged(doc["rows"])
    lines = ["## Points", "", "Mean / p99 latency (s), seed means. best: the best policy other than the default.", ""]
    cells = defaultdict(list)
    for (w, r, m, rate), pols in avg.items():
        cells[(w, r, m)].append((rate, pols))
    for (w, r, m), pts in sorted(cells.items()):
        lines += [f"### {w}, {r} replicas, {m}", "", f"| rate/s | round_robin | best other | {default} | {default} / best |",
                  "|---:|---:|---|---:|---:|"]
        for rate, pols in sorted(pts, key=lambda x: x[0]):
            others = {p: v for p, v in pols.items() if p != default and p not in ablations}
            best = min(others, key=lambda p: others[p]["mean"]) if others else None
            rr, d = pols.get("round_robin"), pols.get(default)
            cell = (lambda v: f"{v['mean']:.3g} / {v['p99']:.3g}" if v else "-")
            ratio = f"{d['mean'] / others[best]['mean']:.2f} / {d['p99'] / others[best]['p99']:.2f}" if d and best else "-"
            lines.append(f"| {rate:.3g} | {cell(rr)} | {best}: {cell(others.get(best))} | {cell(d)} | {ratio} |")
        lines.append("")
    return lines
