"""Routing figures (`preble bench grid`, `results/routing/`): the top README's paragraph on the
default policy, and the tables of `results/routing/README.md`.

Every ratio is the grid report's own (`preble.bench.grid.leaderboard`: a policy's latency over
the best policy's at each point, geometric mean over points), so the READMEs and the reports
beside each grid JSON cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ...core.routing import DEFAULT_POLICY
from ..grid import averaged, carried_rows, gain_over_best_other, knees, leaderboard
from ..workloads.report import PREBLE_WORKLOADS
from .fmt import bare_pct, prose, short, span, words
from .results import Result
from .traced import named_commits

ROUND_ROBIN = "round_robin"
METRICS = ("mean", "p99")
QUOTED_PEERS = ("sglang_gateway", "e2")  # the peers the top README names, nearest to the default
KNEE_GAIN = 2.0  # the bar: this many times lower mean and p99 latency than round_robin at its knee


def _board(grid: Result) -> dict[str, Any]:
    """The grid's leaderboard among its listed policies (ablations are compared to them)."""
    return leaderboard(grid.data, reference=list(grid.data["config"]["policies"]))


def _ablations(grid: Result) -> list[str]:
    return [v["label"] for v in grid.data["config"].get("ablations", [])]


def _rows(grid: Result) -> list[dict[str, Any]]:
    return grid.data["rows"]


def label(grid: Result) -> str:
    """A grid as prose names it: its replica counts, workloads and memory regimes."""
    rows = _rows(grid)
    replicas = sorted({r["replicas"] for r in rows})
    memories = sorted({r["memory"] for r in rows})
    memory = f", {len(memories)} memory sizes" if len(memories) > 1 else ""
    seeds = len(grid.data["config"]["seeds"])
    seeded = f", {seeds} seeds" if seeds > 1 else ""
    return (f"{words([str(n) for n in replicas])} replicas, {len({r['workload'] for r in rows})} workloads"
            f"{memory}{seeded}")


def replicas(grid: Result) -> str:
    """A grid as a list names it: its replica counts ("4/16")."""
    return "/".join(str(n) for n in sorted({r["replicas"] for r in _rows(grid)}))


def _at(at: Sequence[Any]) -> str:
    """A grid point: workload, replicas, memory and rate."""
    workload, replicas, memory, rate = at[:4]
    return f"{workload} x{replicas} {memory} {rate:.3g}/s"


def _worst_cells(board_row: dict[str, Any]) -> str:
    """A leaderboard row's worst mean and worst p99 ratios, each with its point, as two cells."""
    return " | ".join(f"{board_row[f'worst_{m}']['ratio']:.2f} ({_at(board_row[f'worst_{m}']['at'])})" for m in METRICS)


def worse_than_round_robin(grid: Result, policy: str = DEFAULT_POLICY) -> list[tuple[str, float]]:
    """Each (metric, excess) where `policy` is slower than round_robin at a point: excess is
    its latency over round_robin's, minus one."""
    out = []
    for pols in averaged(_rows(grid)).values():
        if policy in pols and ROUND_ROBIN in pols:
            out += [(m, pols[policy][m] / pols[ROUND_ROBIN][m] - 1) for m in METRICS
                    if pols[policy][m] > pols[ROUND_ROBIN][m]]
    return out


def _percent(x: float) -> str:
    """A small excess as a percentage without its sign: 0.0032 -> "0.32"."""
    return f"{x * 100:.2g}"


def _worse_cell(grid: Result) -> str:
    v = _board(grid)[DEFAULT_POLICY]["worse_than_round_robin"]
    excess = worse_than_round_robin(grid)
    if not v:
        return "0"
    metrics = words(sorted({m for m, _ in excess}))
    return f"{v} ({metrics}, by {span([x for _, x in excess], _percent)}%)"


def grids(*grids: Result) -> str:
    """The default policy in each grid: geometric mean and worst ratio to the best policy, points
    within 3% of it, points worse than round_robin, and its gain over the best other policy."""
    lines = [f"| grid (points) | {DEFAULT_POLICY}: mean / p99 | worst mean (where) | worst p99 (where) | "
             "within 3% | worse than round_robin | gain over best other (mean / p99) |",
             "|---|---|---|---|---:|---|---|"]
    for grid in grids:
        v = _board(grid)[DEFAULT_POLICY]
        listed = {**grid.data, "rows": [r for r in _rows(grid) if r["policy"] not in _ablations(grid)]}
        g = gain_over_best_other(listed, DEFAULT_POLICY)
        lines.append(f"| {label(grid)} ({v['points']}) | **{v['geomean_mean']:.3f} / {v['geomean_p99']:.3f}** | "
                     f"{_worst_cells(v)} | {v['within_3pct']} | {_worse_cell(grid)} | {g['mean']:.3f} / {g['p99']:.3f} |")
    return "\n".join(lines)


def knee_gains(*grids: Result) -> str:
    """round_robin's latency over the default's at round_robin's knee (`grid.knees`), mean / p99,
    for each workload at each replica count and memory; the last column counts the workloads
    where both are at least KNEE_GAIN. A cell marked * is the ladder's top rung, below the knee."""
    cells: dict[tuple[int, str], dict[str, str]] = {}
    met: dict[tuple[int, str], int] = defaultdict(int)
    workloads: list[str] = []
    for grid in grids:
        avg = averaged(_rows(grid))
        for (workload, n, memory), (rate, reached) in knees(grid.data).items():
            pols = avg[(workload, n, memory, rate)]
            if DEFAULT_POLICY not in pols:
                continue
            gains = [pols[ROUND_ROBIN][m] / pols[DEFAULT_POLICY][m] for m in METRICS]
            cells.setdefault((n, memory), {})[workload] = (f"{gains[0]:.2f} / {gains[1]:.2f}"
                                                           + ("" if reached else "*"))
            met[(n, memory)] += min(gains) >= KNEE_GAIN
            workloads += [workload] if workload not in workloads else []
    lines = ["| replicas, memory | " + " | ".join(workloads) + f" | workloads with both >= {KNEE_GAIN:g}x |",
             "|---|" + "---|" * len(workloads) + "---:|"]
    for n, memory in sorted(cells):
        row = cells[(n, memory)]
        lines.append(f"| {n}, {memory} | " + " | ".join(row.get(w, "-") for w in workloads)
                     + f" | {met[(n, memory)]} of {len(row)} |")
    return "\n".join(lines)


def seed_spread(grid: Result) -> str:
    """How far a grid's seeds (each a different draw of arrivals) move each policy's figures: the
    median and largest spread (highest minus lowest seed) over its points, as a share of the mean
    over seeds."""
    avg = averaged(_rows(grid))
    seeds = len(grid.data["config"]["seeds"])
    lines = [f"| policy | mean latency: median / largest spread over {seeds} seeds | p99: median / largest spread |",
             "|---|---|---|"]
    for policy in grid.data["config"]["policies"]:
        cells = []
        for metric in METRICS:
            shares = sorted(v[policy][f"{metric}_spread"] / v[policy][metric]
                            for v in avg.values() if policy in v and v[policy][metric] > 0)
            cells.append(f"{shares[len(shares) // 2]:.0%} / {shares[-1]:.0%}")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peers(*grids: Result) -> str:
    """Every listed policy's geometric-mean ratios in each grid, and the points where it is
    slower than round_robin."""
    boards = [_board(g) for g in grids]
    policies = list(dict.fromkeys(p for g in grids for p in g.data["config"]["policies"]))
    policies.sort(key=lambda p: boards[0].get(p, {}).get("geomean_mean", float("inf")))
    lines = ["| policy | " + " | ".join(f"{label(g)} ({b[DEFAULT_POLICY]['points']})" for g, b in zip(grids, boards))
             + " |", "|---|" + "---|" * len(grids)]
    for p in policies:
        cells = [f"{b[p]['geomean_mean']:.3f} / {b[p]['geomean_p99']:.3f} ({b[p]['worse_than_round_robin']})"
                 if p in b else "-" for b in boards]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation(grid: Result) -> str:
    """The default policy with each of its terms off, against the same best policies."""
    board = _board(grid)
    lines = ["| variant | mean / p99 | within 3% |", "|---|---|---:|"]
    for name in [DEFAULT_POLICY, *_ablations(grid)]:
        v = board[name]
        lines.append(f"| {name} | {v['geomean_mean']:.3f} / {v['geomean_p99']:.3f} | {v['within_3pct']} |")
    return "\n".join(lines)


def breakdown(doc: Result) -> str:
    """Mean / p99 latency of each variant at each point of the breakdown; the lowest mean in bold."""
    rows = doc.data["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    points = list(dict.fromkeys((r["replicas"], r["time_scale"]) for r in rows))
    lines = ["| replicas, time_scale | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for n, scale in points:
        at = {r["variant"]: r for r in rows if (r["replicas"], r["time_scale"]) == (n, scale)}
        best = min(r["mean_latency"] for r in at.values())
        cells = []
        for v in variants:
            cell = f"{at[v]['mean_latency']:.2f} / {at[v]['p99_latency']:.1f}"
            cells.append(f"**{cell}**" if at[v]["mean_latency"] == best else cell)
        lines.append(f"| {n}, {scale:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worst_points(doc: Result) -> str:
    """The default's worst grid points re-run (`scripts/routing_worst_points.py`): the grid's
    ratio, then the default and the best policy there, at the grid's size and past the cold start,
    with the workers each used."""
    lines = ["| point | best there | grid: default / best | this commit, grid's size: mean / p99 s | "
             "past the cold start: mean / p99 s | workers used | prefix groups on 1 worker |",
             "|---|---|---:|---|---|---|---|"]
    for p in doc.data["points"]:
        runs = [p["runs"][k] for k in (DEFAULT_POLICY, p["best"])]
        grid, later = (" vs ".join(f"{r[label]['mean_latency']:.3f} / {r[label]['p99_latency']:.3f}" for r in runs)
                       for label in ("grid", "second_half"))
        used = " vs ".join(str(r["second_half"]["workers_used"]) for r in runs)
        alone = " vs ".join(f"{r['second_half']['workers_per_group'].get('1', 0)} of {r['second_half']['prefix_groups']}"
                            for r in runs)
        lines.append(f"| {_at((p['workload'], p['replicas'], p['memory'], p['rate']))} | {p['best']} | "
                     f"{p['ratio']:.2f}x ({p['metric']}) | {grid} | {later} | {used} | {alone} |")
    return "\n".join(lines)


E2, E2_NO_PD = "e2", "e2 without P/D balancing"  # the breakdown's variants of E2
PD_BRANCH, EXPLORE_BRANCH = "pd", "explore"


def breakdown_e2(doc: Result) -> str:
    """What E2 did at each point of the breakdown: its P/D branch, its workers' spread, its
    explore share, its p99 with and without the P/D rule, and the share of TTFT in every variant's
    mean latency."""
    rows = doc.data["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [f"| replicas, time_scale | {E2} `{PD_BRANCH}` requests (their mean latency) | {E2} workers' mean "
             f"latency, slowest / fastest | {E2} `{EXPLORE_BRANCH}` share | {E2} p99 over {E2_NO_PD}'s | "
             + " | ".join(f"TTFT / latency, {v}" for v in variants) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(variants)]
    for n, scale in dict.fromkeys((r["replicas"], r["time_scale"]) for r in rows):
        at = {r["variant"]: r for r in rows if (r["replicas"], r["time_scale"]) == (n, scale)}
        e2 = at[E2]
        pd = e2["branches"].get(PD_BRANCH)  # absent where the rule never fired
        sent = "0" if pd is None else f"{pd['requests']} ({pd['mean_latency']:.1f} s)"
        workers = [w["mean_latency"] for w in e2["workers"].values()]
        decisions = sum(b["requests"] for b in e2["branches"].values())
        lines.append(f"| {n}, {scale:g} | {sent} | {max(workers):.1f} / "
                     f"{min(workers):.1f} s | {e2['branches'][EXPLORE_BRANCH]['requests'] / decisions:.0%} | "
                     f"{e2['p99_latency'] / at[E2_NO_PD]['p99_latency']:.1f}x | "
                     + " | ".join(f"{at[v]['mean_ttft'] / at[v]['mean_latency']:.0%}" for v in variants) + " |")
    return "\n".join(lines)


def _runs(doc: dict[str, Any]) -> str:
    """Runs made of those planned; a capacity search alone plans none (it bisects); a re-run
    (`grid_rerun`) says how many rows it carried over."""
    meta = doc["meta"]
    if not meta["runs_planned"]:
        return "-"
    if meta.get("rerun"):
        return f"{meta['runs']:,} re-run + {carried_rows(doc):,} carried"
    return f"{meta['runs']:,} / {meta['runs_planned']:,}"


def files(*grids: Result) -> str:
    """Where each grid file comes from: its commits, date, and the runs made of those planned."""
    lines = ["| file | commit | date | runs made / planned | points |", "|---|---|---|---:|---:|"]
    for g in grids:
        meta = g.data["meta"]
        dirty = f" (dirty, diff {meta['diff_sha256']})" if meta.get("dirty") else ""
        points = len(averaged(_rows(g))) if _rows(g) else "-"
        lines.append(f"| `{g.name}` | {words([short(c) for c in named_commits(g.data)])}{dirty} | {meta['date']} | "
                     f"{_runs(g.data)} | {points} |")
    return "\n".join(lines)


def shared_prefixes(trace: Result, grid: Result) -> str:
    """How much of a trace's prompts other prompts begin with, against the Preble workloads."""
    stats = trace.data["workloads"]
    name = next(iter(stats))
    preble = [grid.data["workloads"][w]["shared_fraction"] for w in PREBLE_WORKLOADS]
    return prose(f"On the {name} trace {stats[name]['shared_fraction']:.0%} of prompt tokens begin another prompt "
                 f"too (the workload statistics in `{trace.name}`, over {stats[name]['num_requests']:,} requests), "
                 f"against {span(preble, bare_pct)}% on the Preble workloads ({words(list(PREBLE_WORKLOADS))}, "
                 f"`{grid.name}`).")


REUSE_POLICIES = (DEFAULT_POLICY, "dynamo_kv", "cache_aware", ROUND_ROBIN)  # the reuse table's columns
REUSE_PEER = "dynamo_kv"  # the best other policy at the capacity search's replica counts


def reuse_bound(reuse: Result, *grids: Result) -> str:
    """Each policy's hit ratio on the trace at every replica count of the grids (lowest-highest over
    the loads, h200 memory), beside the share of prompt tokens an earlier prompt began with (no
    placement finds more in cache), and what that bounds: REUSE_PEER's prompt tokens to compute
    over the fewest any placement could leave, (1 - its hit ratio) / (1 - reusable share)."""
    data = reuse.data
    best = data["reusable_fraction"]
    ratios: dict[int, dict[str, list[float]]] = {}
    for grid in grids:
        for r in _rows(grid):
            if r["workload"] == data["workload"] and r["memory"] == "h200" and r["policy"] in REUSE_POLICIES:
                ratios.setdefault(r["replicas"], {}).setdefault(r["policy"], []).append(r["hit_ratio"])
    lines = ["| replicas | " + " | ".join(f"{p} hit ratio" for p in REUSE_POLICIES)
             + f" | {REUSE_PEER}'s prompt tokens to compute, over the fewest |",
             "|---:|" + "---:|" * (len(REUSE_POLICIES) + 1)]
    for n in sorted(ratios):
        cells = [span(ratios[n][p], bare_pct) + "%" if p in ratios[n] else "-" for p in REUSE_POLICIES]
        bound = span([(1 - h) / (1 - best) for h in ratios[n].get(REUSE_PEER, [])], lambda x: f"{x:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {bound}x |")
    return "\n".join(lines) + "\n\n" + prose(
        f"Of the {data['prompt_tokens']:,} prompt tokens the runs measure (requests {data['measured_from'] + 1:,}-"
        f"{data['requests']:,} of the trace), {best:.1%} begin with what an earlier prompt began with, in whole "
        f"pages of {data['page_size']} (`{reuse.name}`): no placement finds more of them in cache.")


def _capacity(doc: Result) -> dict[int, dict[str, float]]:
    """Requests/s at the SLO, by replica count and policy."""
    out: dict[int, dict[str, float]] = {}
    for c in doc.data["capacity"]:
        out.setdefault(c["replicas"], {})[c["policy"]] = c["capacity"]
    return out


def _best_other(caps: dict[str, float]) -> str:
    return max((p for p in caps if p != DEFAULT_POLICY), key=caps.__getitem__)


def _x(x: float) -> str:
    return f"{x:.3g}x"


def capacity(doc: Result) -> str:
    """Capacity at the TTFT SLO per policy (the highest in bold), then the default's against the
    best other policy, SGLang's gateway rule, round_robin and e2."""
    caps = _capacity(doc)
    sizes = sorted(caps)
    slo = doc.data["capacity"][0]["slo_s"]
    policies = sorted(caps[sizes[-1]], key=lambda p: (p != DEFAULT_POLICY, -caps[sizes[-1]][p]))
    lines = [f"| replicas (SLO {slo:.3g} s) | " + " | ".join(policies) + " |", "|---:|" + "---:|" * len(policies)]
    for n in sizes:
        top = max(caps[n].values())
        cells = [(f"**{caps[n][p]:.3g}**" if caps[n][p] == top else f"{caps[n][p]:.3g}") for p in policies]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    best = [_best_other(caps[n]) for n in sizes]
    against = [("the best other policy (" + words(list(dict.fromkeys(best))) + ")", best),
               *((p, [p] * len(sizes)) for p in (*QUOTED_PEERS[:1], ROUND_ROBIN, *QUOTED_PEERS[1:]))]
    ratios = [f"{words([_x(caps[n][DEFAULT_POLICY] / caps[n][q]) for n, q in zip(sizes, qs)])} {name}"
              for name, qs in against]
    return "\n".join(lines) + "\n\n" + prose(f"At {words([str(n) for n in sizes])} replicas the default "
                                             f"carries {words(ratios)}.")


def headline(*grids_and_capacity: Result) -> str:
    """The top README's paragraph: the default against the best policy in each grid, against
    round_robin, its worst points, the nearest peers, and capacity on the Mooncake trace."""
    *grids, cap = grids_and_capacity
    boards = [_board(g)[DEFAULT_POLICY] for g in grids]
    model = grids[0].data["meta"]["device"].removeprefix("simulated from ")
    within = words([f"{b['geomean_mean']:.3f}x ({label(g)}, {b['points']} points)" for g, b in zip(grids, boards)])
    never = [replicas(g) for g, b in zip(grids, boards) if not b["worse_than_round_robin"]]
    worse = [f"in the {replicas(g)}-replica grid at {b['worse_than_round_robin']} "
             f"point{'s' if b['worse_than_round_robin'] > 1 else ''}, by at most "
             f"{max(x for _, x in worse_than_round_robin(g)):.1%} in "
             f"{words(sorted({m for m, _ in worse_than_round_robin(g)}))}"
             for g, b in zip(grids, boards) if b["worse_than_round_robin"]]
    worst_p99 = max(boards, key=lambda b: b["worst_p99"]["ratio"])["worst_p99"]
    worst_workloads = sorted({b["worst_mean"]["at"][0] for b in boards})
    all_boards = [_board(g) for g in grids]
    peer = words([f"`{p}` at {span([b[p]['geomean_mean'] for b in all_boards], lambda x: f'{x:.2f}')}x"
                  for p in QUOTED_PEERS])
    caps = _capacity(cap)
    sizes = sorted(caps)
    best = [_best_other(caps[n]) for n in sizes]
    most = all(caps[n][DEFAULT_POLICY] == max(caps[n].values()) for n in sizes)
    commits = list(dict.fromkeys(short(c) for r in (*grids, cap) for c in named_commits(r.data)))
    return prose(f"In the simulator (real schedulers, caches and policies; the `{model}` cost model), the default "
            f"policy `{DEFAULT_POLICY}` is within {within} of the best policy at each point in geometric mean. "
            f"It is never worse than round_robin in the {words(never)}-replica grids"
            + (f", and worse {words(worse)}" if worse else "")
            + f"; its worst points are {span([b['worst_mean']['ratio'] for b in boards], lambda x: f'{x:.2f}')}x "
            f"the best mean ({words(worst_workloads)}) and {worst_p99['ratio']:.2f}x the best p99 "
            f"({_at(worst_p99['at'])}). The nearest peers are {peer} the best in geometric mean. On the Mooncake trace it "
            f"carries {'the most load' if most else 'a load'} at a TTFT SLO: "
            f"{words([f'{caps[n][DEFAULT_POLICY]:.3g}' for n in sizes])} requests/s at {words([str(n) for n in sizes])} "
            f"replicas, {words([_x(caps[n][DEFAULT_POLICY] / caps[n][b]) for n, b in zip(sizes, best)])} the best "
            f"other policy ({words(list(dict.fromkeys(best)))}) and "
            f"{words([_x(caps[n][DEFAULT_POLICY] / caps[n]['e2']) for n in sizes])} e2 (`results/routing/README.md`, "
            f"commits {words(commits)}).")


def policy_trial(doc: Result) -> str:
    """A trial of the default with one change (the copy credit's, `scripts/routing_replica_trial.py`
    as of a2adb5a; the eviction term's, `scripts/routing_eviction_trial.py`; the backlog term's,
    `scripts/routing_backlog_trial.py` as of 9ba75a0): the default and the
    trial against the peers' grid figures (leaderboard), then the trial over the default per
    cell, the range over the cell's loads."""
    trial = doc.data["meta"]["trial"]
    before = f"{DEFAULT_POLICY} at {short(doc.data['meta']['commit'])}"
    lines = ["| policy (points) | mean / p99 over the best | worst mean (where) | worst p99 (where) | within 3% | "
             "worse than round_robin |", "|---|---|---|---|---:|---:|"]
    for policy, v in doc.data["leaderboard"].items():
        lines.append(f"| {before if policy == DEFAULT_POLICY else policy} ({v['points']}) | "
                     f"{v['geomean_mean']:.3f} / {v['geomean_p99']:.3f} | "
                     f"{_worst_cells(v)} | {v['within_3pct']} | {v['worse_than_round_robin']} |")
    lines += ["", f"| workload | replicas | memory | {trial} over {before}: mean, lowest-highest over "
              "the loads | p99 |", "|---|---:|---|---|---|"]
    avg = averaged(doc.data["rows"])
    for cell in sorted(dict.fromkeys(point[:3] for point in avg), key=lambda c: (c[0], c[2], c[1])):
        at = [pols for point, pols in avg.items() if point[:3] == cell]
        spans = [span([pols[trial][m] / pols[DEFAULT_POLICY][m] for pols in at], lambda x: f"{x:.2f}") for m in METRICS]
        lines.append(f"| {' | '.join(map(str, cell))} | {spans[0]} | {spans[1]} |")
    return "\n".join(lines)
