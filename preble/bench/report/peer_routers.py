"""Peer-router figures (`preble bench routers`, `results/peer_routers/`): the tables of
`results/peer_routers/README.md`."""

from __future__ import annotations

from typing import Any

from .fmt import prose, short, words
from .results import Result

SECONDS_PER_MINUTE = 60
DIGITS = 2  # seconds are compared as the tables show them, so that a tie reads as one
E2, ROUND_ROBIN = "preble:e2", "preble:round_robin"  # Preble's router under its two policies


def _runs(result: Result) -> dict[tuple[str, str], dict[str, Any]]:
    """Each (workload, router) run of a results file."""
    return {(r["workload"], r["router"]): r for r in result.data["runs"] if "summary" in r}


def _shown(run: dict[str, Any]) -> float:
    return round(run["summary"]["mean_latency"], DIGITS)


def _origin(result: Result) -> str:
    d = result.data
    return (f"`{result.name}`: commit {short(d['commit'])}, {d['date'][:10]}, "
            f"{d['wall_s'] / SECONDS_PER_MINUTE:.0f} minutes")


def mean_latency(*results: Result) -> str:
    """Mean latency (answered / sent) per workload and router, the lowest in bold. Routers of a
    later file are added beside the first file's, named with the file they come from."""
    columns: list[tuple[str, Result]] = []
    for result in results:
        for router in dict.fromkeys(r["router"] for r in result.data["runs"]):
            if router not in {c for c, _ in columns}:
                columns.append((router, result))
    labels = [router if res is results[0] else f"{router} (`{res.name}`)" for router, res in columns]
    lines = ["| workload | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(columns)]
    for workload in dict.fromkeys(r["workload"] for r in results[0].data["runs"]):
        runs = [_runs(res).get((workload, router)) for router, res in columns]
        best = min(_shown(r) for r in runs if r)
        cells = []
        for run in runs:
            if run is None:
                cells.append("-")
                continue
            mean = f"{_shown(run):.{DIGITS}f}"
            cells.append(f"{f'**{mean}**' if _shown(run) == best else mean} "
                         f"({run['summary']['requests']}/{run['num_requests']})")
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", prose("From " + "; ".join(_origin(r) for r in results) + ".")])


def e2_against(first: Result, health5: Result) -> str:
    """e2 against round_robin in the run with the longer health timeout, and the first run's
    peers where they are ahead of that e2."""
    runs, peers = _runs(health5), _runs(first)
    workloads = list(dict.fromkeys(w for w, _ in runs))
    ratios = []
    for w in workloads:
        e2, rr = runs[(w, E2)]["summary"], runs[(w, ROUND_ROBIN)]["summary"]
        ratios.append(f"{w} {rr['mean_latency'] / e2['mean_latency']:.2f}x / {rr['p99_latency'] / e2['p99_latency']:.2f}x")
    ahead = []
    for w in workloads:
        e2 = runs[(w, E2)]
        better = [(_shown(e2) / _shown(r), router) for (wl, router), r in peers.items()
                  if wl == w and not router.startswith("preble:") and _shown(r) < _shown(e2)]
        if better:
            x, router = max(better)
            ahead.append(f"{router} on {w} ({x:.2f}x)")
    return prose(f"e2 against round_robin (round_robin's latency over e2's, mean / p99): {words(ratios)}. "
                 + (f"Ahead of e2: {words(ahead)}." if ahead else "No peer is ahead of e2."))
