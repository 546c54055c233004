"""Latency-vs-rate plots from run summaries (live `bench serve` runs or simulated ones)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def read_summaries(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def latency_vs_rate(summaries: Iterable[Mapping[str, Any]], path: Path, title: str = "",
                    metrics: tuple[str, ...] = ("mean_latency", "p99_latency")) -> Path:
    """One panel per metric, one line per label (a policy or a server), rate on the x axis.
    Summaries without a rate (trace arrivals) are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summaries if s.get("rate")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label in dict.fromkeys(str(s.get("label")) for s in rows):
            pts = sorted((s["rate"], s[metric]) for s in rows if str(s.get("label")) == label)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=3, label=label)
        ax.set_xlabel("requests/s")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (s)")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
