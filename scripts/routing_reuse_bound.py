"""How much prefill any router could save on a trace: the share of prompt tokens an earlier prompt
began with, counted in whole KV pages over the requests a grid run measures.

A router decides where a prompt goes, not what it shares: at best every token an earlier prompt
began with is found in the cache it is sent to. The share of prompt tokens so served is then the
highest hit ratio any placement reaches, and a policy measured at hit ratio h leaves at most
(1 - h) / (1 - best) of its prefill work to save. The requests are those of the committed
grids' runs of the trace (the first `max_requests`, statistics past the first `warmup_fraction`;
the warm-up's prompts still count as earlier prompts).

    python scripts/routing_reuse_bound.py --out results/routing/mooncake_reuse.json
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from preble.bench.grid import config_of, prepare_workload
from preble.bench.prepare import tokenizer_path
from preble.bench.provenance import host_machine, source_revision
from preble.bench.report.registry import MOONCAKE_CAPACITY
from preble.bench.workloads.base import reusable_prefix_lengths
from preble.core.pages import DEFAULT_PAGE_SIZE


def reuse(grid_file: str, workload: str, page_size: int) -> dict:
    """The workload's reusable share over a grid run's measured requests."""
    cfg = config_of(json.loads(Path(grid_file).read_text()))
    prep = prepare_workload(cfg, workload, tokenizer_path(cfg.base))
    prompts = prep.prompts[: cfg.base.max_requests]
    reusable = reusable_prefix_lengths(prompts, page_size)
    first = int(len(prompts) * cfg.base.warmup_fraction)
    tokens = sum(len(p) for p in prompts[first:])
    return {"workload": workload, "grid": grid_file, "page_size": page_size, "requests": len(prompts),
            "measured_from": first, "prompt_tokens": tokens, "reusable_tokens": sum(reusable[first:]),
            "reusable_fraction": sum(reusable[first:]) / tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default=MOONCAKE_CAPACITY, help="a grid file whose configuration sizes the runs")
    ap.add_argument("--workload", default="mooncake")
    ap.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    doc = {"meta": {**source_revision(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "device": host_machine()},
           **reuse(args.grid, args.workload, args.page_size)}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
