"""Router overhead figures (`preble bench router`, `results/router_overhead*.json`): the top
README's sentence on the default policy, and the tables of `results/router_overhead.md`."""

from __future__ import annotations

from typing import Any

from ...core.routing import DEFAULT_POLICY
from ..router_overhead import IN_FLIGHT
from .fmt import prose, ratio, short, words
from .results import Result
from .traced import provenance


def _ms(x: float) -> str:
    """Decision times: three decimals under a millisecond, three digits above."""
    return f"{x:.3f}" if x < 1 else f"{x:.2f}"


def _policy(run: Result, policy: str) -> dict[str, Any]:
    return run.data["results"][policy]


def _scale(run: Result) -> str:
    p = run.data["parameters"]
    return f"{p['workers']} workers and {p['prefixes'] // 1000}k cached prefixes"


def headline(run: Result, summary_md: str = "results/router_overhead.md") -> str:
    """The top README's clause on the default policy's decision time and rate."""
    r = _policy(run, DEFAULT_POLICY)
    return prose(f"The router's default policy decides in {r['p50_ms']:.2f} ms (p50) / {r['p99_ms']:.2f} ms (p99), "
            f"{r['decisions_per_s']:,.0f} decisions a second on one core, with {_scale(run)} "
            f"(`{summary_md}`, commit {short(run.data['commit'])}).")


def mix(run: Result) -> str:
    """Each policy's decisions by routing branch, most frequent first."""
    parts = []
    for policy, r in run.data["results"].items():
        branches = sorted(r["branches"].items(), key=lambda kv: -kv[1])
        parts.append(f"`{policy}` " + ", ".join(f"{n:,} {b}" for b, n in branches))
    return prose("The mix, by branch: " + "; ".join(parts) + ".")


def table(run: Result) -> str:
    """One run's policies: decision time, rate, the tail under Python's default collector, memory."""
    lines = ["| policy | p50 route | p99 route | decisions/s (all calls) | p99 route, Python's default GC | "
             "policy memory |", "| --- | --- | --- | --- | --- | --- |"]
    for policy, r in run.data["results"].items():
        name = f"{policy} (default)" if policy == DEFAULT_POLICY else policy
        lines.append(f"| {name} | {_ms(r['p50_ms'])} ms | {_ms(r['p99_ms'])} ms | {r['decisions_per_s']:,.0f} | "
                     f"{_ms(r['default_gc']['p99_ms'])} ms | {r['policy_mb']:.0f} MB |")
    return "\n".join(lines)


def runs(*files: Result) -> str:
    """Every committed run, a row per policy: where and at which commit it ran."""
    lines = ["| file | machine | commit | requests in flight | policy | p50 / p99 route | decisions/s | policy memory | "
             "slowest decision (`max_route_ms`) | size before the build (`rss_before_build_mb`) |",
             "|---|---|---|---:|---|---|---:|---:|---:|---:|"]
    for run in files:
        d, source = run.data["device"], provenance(run.data)
        machine = f"{d['cpu']}, {d['cpus']} cores, Python {d['python']}"
        in_flight = run.data["parameters"].get("in_flight", IN_FLIGHT)  # files before the option: the default
        for policy, r in run.data["results"].items():
            lines.append(f"| `{run.name}` | {machine} | {short(source['commit'])} | {in_flight} | {policy} | "
                         f"{_ms(r['p50_ms'])} / {_ms(r['p99_ms'])} ms | {r['decisions_per_s']:,.0f} | "
                         f"{r['policy_mb']:.0f} MB | {r['max_route_ms']:.0f} ms | {r['rss_before_build_mb']:.0f} MB |")
    return "\n".join(lines)


P99_TARGET_MS = 1.0  # the router's targets: p99 decision time ...
RATE_TARGET = 4000  # ... and decisions per second on one core


def targets(*files: Result) -> str:
    """Which policies meet the router's targets on each machine."""
    def verdict(r: dict[str, Any]) -> str:
        missed = [name for name, ok in (("the p99", r["p99_ms"] <= P99_TARGET_MS),
                                        ("the rate", r["decisions_per_s"] >= RATE_TARGET)) if not ok]
        return f"misses {words(missed)}" if missed else "meets both"

    runs = [f"on {run.data['device']['cpus']} cores (`{run.name}`), "
            + ", ".join(f"{p} {verdict(r)}" for p, r in run.data["results"].items()) for run in files]
    return prose(f"Targets (p99 <= {P99_TARGET_MS:g} ms and >= {RATE_TARGET:,} decisions/s): " + "; ".join(runs) + ".")


def gain(before: Result, after: Result) -> str:
    """How much faster the default policy decides in `after` than in `before` (same machine)."""
    b, a = _policy(before, DEFAULT_POLICY), _policy(after, DEFAULT_POLICY)
    return prose(f"At {short(after.data['commit'])} on the same machine: {ratio(b['p50_ms'] / a['p50_ms'], 1)} lower "
            f"p50, {ratio(b['p99_ms'] / a['p99_ms'], 1)} lower p99, {ratio(a['decisions_per_s'] / b['decisions_per_s'], 1)} "
            f"the decisions per second ({short(before.data['commit'])}: {_ms(b['p50_ms'])} / {_ms(b['p99_ms'])} ms, "
            f"{b['decisions_per_s']:,.0f}/s, `{before.name}`).")


def statistics_cost(before: Result, after: Result, control: str = "e2") -> str:
    """What the default policy's per-prefix statistics cost between two runs of one machine,
    beside the spread of a policy (`control`) whose code did not change between them."""
    b, a = _policy(before, DEFAULT_POLICY), _policy(after, DEFAULT_POLICY)
    cb, ca = _policy(before, control), _policy(after, control)
    return prose(f"On the development machine the default policy gave {_ms(b['p50_ms'])} / {_ms(b['p99_ms'])} ms, "
            f"{b['decisions_per_s']:,.0f} decisions/s and {b['policy_mb']:.0f} MB at {short(before.data['commit'])} "
            f"(`{before.name}`) and {_ms(a['p50_ms'])} / {_ms(a['p99_ms'])} ms, {a['decisions_per_s']:,.0f}/s and "
            f"{a['policy_mb']:.0f} MB at {short(after.data['commit'])} (`{after.name}`). Runs of the same code "
            f"differ by up to {abs(1 - ca['decisions_per_s'] / cb['decisions_per_s']):.0%} in rate here "
            f"({control}, whose code did not change between the two, went from {cb['decisions_per_s']:,.0f} to "
            f"{ca['decisions_per_s']:,.0f}/s), so the time cost is within that; the "
            f"{a['policy_mb'] - b['policy_mb']:.0f} MB are the statistics.")


def copy_credit_cost(before: Result, after: Result, idle: Result, control: str = "cache_aware") -> str:
    """The default's decision time with its copy credit (`after`) against without it (`before`),
    measured the same hour beside a policy whose code did not change (`control`), and with few
    requests in flight (`idle`: most workers idle, where the credit is priced)."""
    b, a, i = _policy(before, DEFAULT_POLICY), _policy(after, DEFAULT_POLICY), _policy(idle, DEFAULT_POLICY)
    cb, ca = _policy(before, control), _policy(after, control)

    def figures(r: dict[str, Any]) -> str:
        return f"{_ms(r['p50_ms'])} / {_ms(r['p99_ms'])} ms and {r['decisions_per_s']:,.0f} decisions/s"

    return prose(f"The default gave {figures(a)} with the copy credit ({short(after.data['commit'])}, `{after.name}`) "
                 f"and {figures(b)} without it ({short(before.data['commit'])}, `{before.name}`), the two measured "
                 f"within the hour ({control}, whose code did not change, gave {figures(cb)} and {figures(ca)}). With "
                 f"{idle.data['parameters']['in_flight']} requests in flight (`{idle.name}`), most of the "
                 f"{idle.data['parameters']['workers']} workers have nothing routed to them, where the credit is "
                 f"priced: {figures(i)}.")


def side_by_side(*files: Result) -> str:
    """The default against an earlier commit in one process (`scripts/router_ab.py`), per file."""
    def one(run: Result) -> str:
        r, p = run.data["results"], run.data["parameters"]
        new, base = r["new"], r["base"]
        return (f"with {p['in_flight']} requests in flight (`{run.name}`, {p['identical_decisions']:,} identical "
                f"decisions): {base['decisions_per_s']:,.0f} -> {new['decisions_per_s']:,.0f} decisions/s "
                f"({ratio(r['speedup'], 2)}), p50 {_ms(base['p50_ms'])} -> {_ms(new['p50_ms'])} ms, p99 "
                f"{_ms(base['p99_ms'])} -> {_ms(new['p99_ms'])} ms")

    first = files[0].data
    return prose(f"The default at {short(first['commit'])} against {short(first['parameters']['base'])}, "
                 f"on {first['device']['cpu']} in one process: " + "; ".join(one(f) for f in files) + ".")
