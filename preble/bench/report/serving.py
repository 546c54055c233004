"""Serving-path figures (`preble bench serving`, `results/serving/`): the table of
`results/serving/README.md`, one column per run, with the engine in-process beside them."""

from __future__ import annotations

from typing import Any

from .fmt import prose, short
from .results import Result

LATENCIES = (("TTFT cold, {prompt_tokens} tokens", "ttft_cold_ms"),
             ("TTFT, {prompt_tokens} new tokens on a cached {cached_prefix}-token prefix", "ttft_cached_ms"),
             ("time per output token, batch 1", "decode_batch1_tpot_ms"))
STREAMS = (16, 64)  # concurrencies the table quotes


def _throughput(side: dict[str, Any], concurrency: int, stream: bool | None) -> float:
    """Output tokens/s at `concurrency` (streamed or not; the in-process engine does not stream)."""
    return next(r["output_tokens_per_s"] for r in side["concurrency"]
                if r["concurrency"] == concurrency and r.get("stream") in (stream, None))


def table(*runs: Result) -> str:
    """Median TTFT cold and on a cached prefix, time per token, and throughput at several
    concurrencies: each run's served path, then the engine in-process of the last run that has it."""
    local = next(r for r in reversed(runs) if r.data.get("in_process")).data["in_process"]
    cfg = runs[-1].data["config"]
    lines = ["| measure (median) | " + " | ".join(f"`{r.name}`" for r in runs) + " | in-process engine |",
             "|---|" + "---|" * (len(runs) + 1)]
    for name, key in LATENCIES:
        cells = [f"{r.data['served'][key]:.2f} ms" for r in runs] + [f"{local[key]:.2f} ms"]
        lines.append(f"| {name.format(**cfg)} | " + " | ".join(cells) + " |")
    for n in STREAMS:
        cells = [f"{_throughput(r.data['served'], n, True):,.0f} / {_throughput(r.data['served'], n, False):,.0f}"
                 for r in runs] + [f"{_throughput(local, n, None):,.0f}"]
        lines.append(f"| {n} streams, tokens/s (streamed / not) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hops(run: Result) -> str:
    """The first token's path, hop by hop, for a cold prompt."""
    steps = ", ".join(f"{hop.replace('->', ' -> ').replace('_', ' ')} {ms:.2f}"
                      for hop, ms in run.data["served"]["hops_cold_ms"].items())
    return prose(f"First token's path at {short(run.data['meta']['commit'])} (cold prompt, median ms per hop; "
                 f"`{run.name}`): {steps}.")
