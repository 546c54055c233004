"""The comparison's report: a Markdown summary (workloads, each replica count's ladder, the
studies, the targets) and latency-vs-rate plots, from its JSON document."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .compare import row_at, targets
from .workloads.report import compare_to_paper


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def markdown(doc: dict[str, Any]) -> str:
    meta, cfg = doc["meta"], doc["config"]
    lines = [f"# Policy comparison ({meta['device']})", "",
             f"commit {meta['commit']}, {meta['date']}. Each replica: {cfg['num_pages']} KV pages of "
             f"{cfg['page_size']} tokens, a {cfg['max_num_batched_tokens']}-token step budget; "
             f"arrivals Poisson over {cfg['duration_s']:.0f} s ({cfg['min_requests']}-"
             f"{cfg['max_requests']} requests a run). Latencies in seconds.", "", "## Workloads", "",
             compare_to_paper({w["workload"]: w["stats"] for w in doc["workloads"] if "stats" in w})]
    for w in doc["workloads"]:
        lines += [f"## {w['workload']}", ""]
        for n in sorted({r["replicas"] for r in w["rows"]}):
            rows = [r for r in w["rows"] if r["replicas"] == n]
            knee = w["knees"].get(n, w["knees"].get(str(n)))
            pols = list(dict.fromkeys(r["policy"] for r in rows))
            lines += [f"{n} replicas (knee: {_fmt(knee)}/s). Mean / p99 latency:", "",
                      "| rate/s | " + " | ".join(pols) + " |", "|---:|" + "---:|" * len(pols)]
            for rate in sorted({r["rate"] for r in rows}):
                cells = []
                for p in pols:
                    r = row_at(rows, rate, p)
                    cells.append(f"{_fmt(r['mean_latency'])} / {_fmt(r['p99_latency'])}" if r else "-")
                mark = " (knee)" if knee == rate else ""
                lines.append(f"| {rate:.3g}{mark} | " + " | ".join(cells) + " |")
            lines.append("")
        for key, title in (("local", "Local queue policies"), ("ablation", "Ablation"),
                           ("scaling", "Scaling")):
            if not w.get(key):
                continue
            lines += [f"{title}:", "", "| replicas | rate/s | variant | mean | p99 | mean TTFT | hit ratio |",
                      "|---:|---:|---|---:|---:|---:|---:|"]
            lines += [f"| {r['replicas']} | {r['rate']:.3g} | {r['policy']} | {_fmt(r['mean_latency'])} | "
                      f"{_fmt(r['p99_latency'])} | {_fmt(r['mean_ttft'])} | {r['hit_ratio']:.2f} |"
                      for r in w[key]]
            lines.append("")
    t = targets(doc)
    lines += ["## Targets", ""]
    for n, v in t.items():
        gains = ", ".join(f"{k} {g['mean']:.2f}x / {g['p99']:.2f}x" for k, g in v["knee_gain"].items())
        worst = ", ".join(f"{k} {x['ratio']:.2f} at {x['rate']:.3g}/s" for k, x in v["worst_vs_best_baseline"].items())
        lines += [f"- {n} replicas: e2 over round_robin at the knee (mean / p99): {gains}; "
                  f">= 2x on {len(v['workloads_2x'])} of {len(v['knee_gain'])} "
                  f"({'met' if v['met_2x_on_4'] else 'missed'}).",
                  f"  e2 mean / best baseline mean, worst rate: {worst} "
                  f"({'met' if v['met_within_5pct'] else 'missed'}).",
                  f"  toolbench p99, cache_aware / e2 at the knee: {_fmt(v['toolbench_p99_vs_cache_aware'])} "
                  f"({'met' if v['met_toolbench_1_3x'] else 'missed'})."]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], out: Path) -> list[Path]:
    """Mean and p99 latency vs rate: one PNG per replica count, a column per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    replicas = sorted({r["replicas"] for w in doc["workloads"] for r in w["rows"]})
    for n in replicas:
        ws = doc["workloads"]
        fig, axes = plt.subplots(2, len(ws), figsize=(3.2 * len(ws), 5.6), squeeze=False)
        for j, w in enumerate(ws):
            rows = [r for r in w["rows"] if r["replicas"] == n]
            for i, metric in enumerate(("mean_latency", "p99_latency")):
                ax = axes[i][j]
                for p in dict.fromkeys(r["policy"] for r in rows):
                    pts = sorted((r["rate"], r[metric]) for r in rows if r["policy"] == p)
                    ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=3, label=p)
                ax.set_yscale("log")
                ax.set_title(f"{w['workload']}" if i == 0 else "")
                ax.set_xlabel("requests/s" if i == 1 else "")
                ax.set_ylabel(f"{metric.replace('_', ' ')} (s)" if j == 0 else "")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{n} replicas, {doc['meta']['device']}")
        fig.tight_layout()
        path = out.with_name(f"{out.stem}_{n}r.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written

