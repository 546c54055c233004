"""Simulator validation figures (`preble bench validate`, `results/validation/`): the tables of
`results/validation/README.md`."""

from __future__ import annotations

from .fmt import prose, words
from .results import Result

MEAN_LATENCY_TARGET = 0.15  # the simulator's mean latency within this of the real run's
METRICS = (("mean_latency", "mean latency", "s"), ("p99_latency", "p99 latency", "s"),
           ("mean_ttft", "mean TTFT", "s"), ("mean_tpot", "mean TPOT", "s"), ("hit_ratio", "hit ratio", ""))


def _within(run: Result) -> bool:
    return abs(run.data["relative_error"]["mean_latency"]) <= MEAN_LATENCY_TARGET


def _verdict(runs: tuple[Result, ...]) -> str:
    met = [f"{r.data['config']['rate']:g}/s" for r in runs if _within(r)]
    return prose(f"Mean latency is within the {MEAN_LATENCY_TARGET:.0%} target at {len(met)} of {len(runs)} rates"
                 + (f" ({words(met)})." if met and len(met) < len(runs) else "."))


def by_rate(*runs: Result) -> str:
    """One row per rate: mean latency real and simulated, and the simulator's error in mean and
    p99 latency and mean TTFT; then the target's verdict."""
    lines = ["| rate | file | mean latency real / sim | error | p99 error | mean TTFT error |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in sorted(runs, key=lambda r: r.data["config"]["rate"]):
        e = r.data["relative_error"]
        lines.append(f"| {r.data['config']['rate']:g}/s | `{r.name}` | {r.data['real']['mean_latency']:.3f} / "
                     f"{r.data['sim']['mean_latency']:.3f} s | {e['mean_latency']:+.1%} | {e['p99_latency']:+.1%} | "
                     f"{e['mean_ttft']:+.1%} |")
    return "\n".join(lines + ["", _verdict(runs)])


def _value(x: float, unit: str) -> str:
    return f"{x:.3g} {unit}".rstrip()


def metrics(run: Result) -> str:
    """One run's statistics, real against simulated, with the simulator's error; then how much
    slower each decode step ran live than the simulator timed it."""
    d = run.data
    lines = ["| metric | real | simulated | error |", "|---|---:|---:|---:|"]
    for key, name, unit in METRICS:
        lines.append(f"| {name} | {_value(d['real'][key], unit)} | {_value(d['sim'][key], unit)} | "
                     f"{d['relative_error'][key]:+.1%} |")
    verdict = "met" if _within(run) else "missed"
    slower = d["real"]["mean_tpot"] / d["sim"]["mean_tpot"] - 1
    return "\n".join(lines + ["", prose(
        f"The {MEAN_LATENCY_TARGET:.0%} target on mean latency is {verdict} (`{run.name}`); in the live run "
        f"each decode step took {slower:.0%} longer than the simulator's (mean TPOT).")])
