#!/usr/bin/env python3
"""The first token's path through `preble serve`, code against code: each tree serves a tiny
random Llama on the CPU (router and one worker), takes `--requests` sequential streamed requests
of one output token, and gives the median of each hop (`x-preble-timing`) and the CPU each serving
process spent per request. The trees take turns, `--runs` times each, so that the machine's drift
falls on both alike.

    python scripts/first_token_ab.py --tree new=. --tree old=/path/to/other/checkout --out FILE.json

Each run starts its tree's `preble serve` with that tree first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from preble.bench.provenance import source_revision

PROMPT_TOKENS = 16
WARMUP = 5

RUN_ONE = r"""
import asyncio, json, os, sys
from pathlib import Path
from preble.bench.local_cluster import LocalCluster
from preble.bench.process_cpu import cpu_by_role
from preble.bench.serving import Prompts, hop_breakdown
from preble.bench.serving_clients import Client
from preble.bench.serving_config import QUICK
from preble.models.random_folder import write_random_model_folder

requests, warmup, prompt_tokens, tmp = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

async def send(url, model, n):
    client, prompts = Client(url, model, 1), Prompts(0, 30000)
    try:
        return [await client.stream(prompts(prompt_tokens), 1) for _ in range(n)]
    finally:
        await client.aclose()

model = str(write_random_model_folder(Path(tmp) / "model", "llama3-8b", 0, **QUICK["preset_overrides"]))
with LocalCluster(model, workers=1, device="cpu", worker_args=("--load-format", "dummy", "--num-pages", "512")) as c:
    asyncio.run(send(c.url, os.path.basename(model), warmup))
    before = cpu_by_role(c.proc.pid)
    results = asyncio.run(send(c.url, os.path.basename(model), requests))
    after = cpu_by_role(c.proc.pid)
ttft = sorted(r["first"] - r["sent"] for r in results)
print(json.dumps({"ttft_ms": ttft[len(ttft) // 2] * 1e3, "hops_ms": hop_breakdown(results),
                  "cpu_ms_per_request": {role: (after[role] - before[role]) / requests * 1e3
                                         for role in ("router", "frontend")}}))
"""


def run_tree(tree: Path, requests: int) -> dict:
    """One run of `tree`'s serving path, in a process of its own with that tree's code."""
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    with tempfile.TemporaryDirectory(prefix="preble-first-token-") as tmp:
        out = subprocess.run([sys.executable, "-c", RUN_ONE, str(requests), str(WARMUP), str(PROMPT_TOKENS), tmp],
                             env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def tree_commit(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()


def summary(runs: list[dict]) -> dict:
    """Per hop and per process, the median over the runs of each run's median."""
    hops = {k: statistics.median(r["hops_ms"][k] for r in runs) for k in runs[0]["hops_ms"]}
    cpu = {k: statistics.median(r["cpu_ms_per_request"][k] for r in runs) for k in runs[0]["cpu_ms_per_request"]}
    return {"ttft_ms": statistics.median(r["ttft_ms"] for r in runs), "hops_ms": hops, "cpu_ms_per_request": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", required=True, help="LABEL=PATH of a checkout; repeat")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    runs: dict[str, list[dict]] = {label: [] for label in trees}
    for k in range(args.runs):
        for label, path in trees.items():
            runs[label].append(run_tree(Path(path), args.requests))
            print(label, k, json.dumps(runs[label][-1]["hops_ms"]), flush=True)
    doc = {"meta": {**source_revision(), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "device": "cpu", "requests": args.requests, "runs": args.runs, "prompt_tokens": PROMPT_TOKENS},
           "trees": {label: {"commit": tree_commit(Path(path)), "runs": runs[label], "summary": summary(runs[label])}
                     for label, path in trees.items()}}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({label: t["summary"] for label, t in doc["trees"].items()}, indent=1))


if __name__ == "__main__":
    main()
