"""Summary statistics of per-request records, shared by the simulator and the live load generator.

Plain records in, a flat dict out. A record is any object (or mapping) with the fields
`arrival, finish_time, ttft, tpot, latency, prompt_tokens, cached_tokens, output_tokens, worker,
branch`; `SimRecord` is one. Percentiles are `preble.core.percentile`'s (numpy's default).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..core.percentile import percentile


def _get(record: Any, name: str) -> Any:
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(records: Iterable[Any], duration: float | None = None) -> dict[str, Any]:
    """Latency, TTFT and TPOT statistics (seconds), throughput and cache hit ratio.

    `duration` (seconds) divides the counts into throughputs; None: from the first arrival to
    the last finish. TPOT statistics cover requests with more than one output token."""
    recs = list(records)
    latency = [float(_get(r, "latency")) for r in recs]
    ttft = [float(_get(r, "ttft")) for r in recs]
    tpot = [float(_get(r, "tpot")) for r in recs if _get(r, "output_tokens") > 1]
    prompt = sum(int(_get(r, "prompt_tokens")) for r in recs)
    cached = sum(int(_get(r, "cached_tokens")) for r in recs)
    outputs = sum(int(_get(r, "output_tokens")) for r in recs)
    if duration is None:
        duration = (max(float(_get(r, "finish_time")) for r in recs)
                    - min(float(_get(r, "arrival")) for r in recs)) if recs else 0.0
    out: dict[str, Any] = {"requests": len(recs), "duration": duration}
    for name, xs in (("latency", latency), ("ttft", ttft), ("tpot", tpot)):
        out[f"mean_{name}"] = _mean(xs)
        for q in (50, 90, 99):
            out[f"p{q}_{name}"] = percentile(xs, q)
        out[f"max_{name}"] = max(xs) if xs else math.nan
    out["throughput"] = len(recs) / duration if duration > 0 else math.nan
    out["output_throughput"] = outputs / duration if duration > 0 else math.nan
    out["prompt_tokens"] = prompt
    out["cached_tokens"] = cached
    out["output_tokens"] = outputs
    out["hit_ratio"] = cached / prompt if prompt else 0.0
    out["branches"] = dict(sorted(Counter(str(_get(r, "branch")) for r in recs).items()))
    out["workers"] = dict(sorted(Counter(str(_get(r, "worker")) for r in recs).items()))
    return out
