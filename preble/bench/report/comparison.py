"""Policy-comparison figures (`preble bench compare`, `results/comparison/`): the targets of
`results/comparison/README.md` from one or more comparison files (runs of different workloads),
by the comparison's own rule (`preble.bench.compare.targets`)."""

from __future__ import annotations

from typing import Any

from ..compare import targets
from .results import Result

KNEE_WINS_NEEDED = 4  # workloads where e2 must be >= 2x better than round_robin at the knee
WITHIN_BEST = 1.05  # e2's mean latency over the best baseline's, at every rate
TOOLBENCH_P99 = 1.3  # cache_aware's p99 over e2's on toolbench at the knee


def _combined(*docs: Result) -> dict[int, dict[str, Any]]:
    """Each replica count's knee gains, worst rates and toolbench ratio over all the files."""
    out: dict[int, dict[str, Any]] = {}
    for doc in docs:
        for n, t in targets(doc.data).items():
            into = out.setdefault(int(n), {"knee_gain": {}, "worst": {}, "toolbench": None})
            into["knee_gain"].update(t["knee_gain"])
            into["worst"].update(t["worst_vs_best_baseline"])
            if t["toolbench_p99_vs_cache_aware"] is not None:
                into["toolbench"] = t["toolbench_p99_vs_cache_aware"]
    return dict(sorted(out.items()))


def knees(*docs: Result) -> str:
    """Per workload and replica count: round_robin's knee, e2 against round_robin there, and e2's
    mean latency over the best baseline's at its worst rate."""
    lines = ["| workload | replicas | knee (requests/s) | round_robin / e2 at the knee, mean / p99 | "
             "e2 / best baseline mean, worst rate |", "|---|---:|---:|---|---|"]
    for n, t in _combined(*docs).items():
        for w in dict.fromkeys([*t["knee_gain"], *t["worst"]]):
            g, worst = t["knee_gain"].get(w), t["worst"].get(w)
            knee = f"{g['rate']:.3g}" if g else "none found"
            gain = f"{g['mean']:.2f}x / {g['p99']:.2f}x" if g else "-"
            lines.append(f"| {w} | {n} | {knee} | {gain} | "
                         + (f"{worst['ratio']:.2f} at {worst['rate']:.3g}/s |" if worst else "- |"))
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def verdicts(*docs: Result) -> str:
    """The comparison's three targets at each replica count, over all the files' workloads."""
    t = _combined(*docs)
    lines = ["| target | " + " | ".join(f"{n} replicas" for n in t) + " |", "|---|" + "---|" * len(t)]
    wins = {n: [w for w, g in v["knee_gain"].items() if g["mean"] >= 2 and g["p99"] >= 2] for n, v in t.items()}
    lines.append(f"| e2 >= 2x lower mean and p99 than round_robin at the knee on at least {KNEE_WINS_NEEDED} workloads | "
                 + " | ".join(f"{len(wins[n])} of {len(v['knee_gain'])}"
                              + (f" ({', '.join(wins[n])})" if wins[n] else "")
                              + f": {_met(len(wins[n]) >= KNEE_WINS_NEEDED)}" for n, v in t.items()) + " |")
    lines.append(f"| e2 never > {WITHIN_BEST - 1:.0%} worse than the best baseline on mean latency | "
                 + " | ".join(f"worst {max(x['ratio'] for x in v['worst'].values()):.2f}: "
                              f"{_met(all(x['ratio'] <= WITHIN_BEST for x in v['worst'].values()))}"
                              for v in t.values()) + " |")
    lines.append(f"| toolbench: e2 p99 >= {TOOLBENCH_P99}x lower than cache_aware's at the knee | "
                 + " | ".join(f"{v['toolbench']:.2f}x: {_met(v['toolbench'] >= TOOLBENCH_P99)}"
                              if v["toolbench"] is not None else "no knee: missed" for v in t.values()) + " |")
    return "\n".join(lines)
