"""Markdown comparison of workload statistics with the Preble paper's headline facts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Preble (arXiv 2407.00023): over its five workloads, prompts are 37x to 2494x longer than the
# outputs and 85% to 97% of a prompt's tokens are shared with other prompts.
PAPER_RATIO = (37.0, 2494.0)
PAPER_SHARED = (0.85, 0.97)
PREBLE_WORKLOADS = ("toolbench", "agent", "programming", "videoqa", "loogle")


def _fmt(x: Any, nd: int = 0) -> str:
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def _verdict(value: float, lo: float, hi: float) -> str:
    if value < lo:
        return "below"
    if value > hi:
        return "above"
    return "within"


def compare_to_paper(stats_by_workload: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per workload (``Workload.stats()`` dicts), with whether its
    prompt/output ratio and shared fraction fall within the paper's ranges."""
    lines = [
        "| workload | requests | unit | prompt mean | p50 | p99 | output mean | prompt/output "
        f"(paper {PAPER_RATIO[0]:.0f}x-{PAPER_RATIO[1]:.0f}x) | shared "
        f"(paper {PAPER_SHARED[0]:.0%}-{PAPER_SHARED[1]:.0%}) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in stats_by_workload.items():
        ratio, shared = float(s["prompt_output_ratio"]), float(s["shared_fraction"])
        tag = "" if name in PREBLE_WORKLOADS else " (not a paper workload)"
        lines.append(
            f"| {name}{tag} | {s['num_requests']} | {s.get('unit', 'tokens')} | "
            f"{_fmt(s['prompt_len_mean'])} | {_fmt(s['prompt_len_p50'])} | {_fmt(s['prompt_len_p99'])} | "
            f"{_fmt(s['output_len_mean'], 1)} | {ratio:,.0f}x ({_verdict(ratio, *PAPER_RATIO)}) | "
            f"{shared:.1%} ({_verdict(shared, *PAPER_SHARED)}) |"
        )
    lines.append("")
    lines.append(
        "Paper: prompts are 37x-2494x longer than outputs; 85%-97% of prompt tokens are shared "
        "with other prompts. Shared = tokens of a prompt equal to a prefix of some other prompt."
    )
    return "\n".join(lines) + "\n"
