"""`preble demo` figures (`results/demo_cpu.json`): the top README's sentence on how long the
showcase runs, and the table of `results/demo_cpu.md`."""

from __future__ import annotations

from ...core.routing import DEFAULT_POLICY
from .fmt import prose, short
from .results import Result

SECONDS_PER_MINUTE = 60
# (summary key, header) of the demo's table: latencies in seconds, then the cache's share.
COLUMNS = (("mean_latency", "mean latency"), ("p50_latency", "p50"), ("p99_latency", "p99"),
           ("mean_ttft", "mean TTFT"), ("p99_ttft", "p99 TTFT"), ("hit_ratio", "hit ratio"), ("errors", "errors"))


def duration(run: Result) -> str:
    """How long the showcase itself ran (start-ups included, installing not)."""
    d = run.data
    return prose(f"The showcase itself ran in about {d['wall_s'] / SECONDS_PER_MINUTE:.0f} minutes on "
            f"{d['device']['cpus']} cores ({d['wall_s']:.0f} s, its {len(d['config']['policies'])} cluster "
            f"start-ups included: `{run.path}`, commit {short(d['commit'])}).")


def _cell(x: float | int) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def table(run: Result) -> str:
    """Each policy's summary, then the default against the other policy."""
    sums = run.data["summaries"]
    lines = ["| policy | " + " | ".join(h for _, h in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    lines += [f"| {p} | " + " | ".join(_cell(s[k]) for k, _ in COLUMNS) + " |" for p, s in sums.items()]
    others = [p for p in sums if p != DEFAULT_POLICY]
    d = sums[DEFAULT_POLICY]
    lines += [""] + [f"{DEFAULT_POLICY} vs {p}: {sums[p]['mean_latency'] / d['mean_latency']:.2f}x lower mean "
                     f"latency, {sums[p]['p99_latency'] / d['p99_latency']:.2f}x lower p99." for p in others]
    return "\n".join(lines)
