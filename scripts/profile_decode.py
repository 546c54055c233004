#!/usr/bin/env python3
"""Where a decode step's time goes: wall time per step against the device's busy time per step,
with steps launched in turn and overlapped (`EngineConfig.overlap`), and the top kernels.

    python scripts/profile_decode.py [--model random:llama3-8b] [--batches 1,64,256] [--context 1024]
                                     [--out decode_profile.json]

The gap between the two is host time the device waits for: scheduling, preparing inputs,
launching, reading the sampled tokens back. One engine serves both modes (switched between
batches, with nothing in flight), so the two see the same kernels, graphs and memory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from preble.bench.engine import environment
from preble.bench.engine_driver import EngineDriver
from preble.core.scheduler_config import SchedulerConfig
from preble.engine.config import EngineConfig
from preble.engine.engine import LLMEngine


def device_busy_ms(driver: EngineDriver, steps: int) -> tuple[float, str]:
    """Kernel time per step (ms) over `steps` profiled steps, and the profiler's top-kernel table."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        driver.timed_steps(steps)
    events = prof.key_averages()
    busy_us = sum(e.self_device_time_total for e in events)
    table = events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60)
    return busy_us / 1e3 / steps, table


def measure(driver: EngineDriver, batch: int, context: int, steps: int) -> dict:
    reqs = driver.decode_batch(batch, context, 2 * steps)
    wall_ms = driver.timed_steps(steps) * 1e3
    busy_ms, table = device_busy_ms(driver, steps)
    assert not any(r.is_finished for r in reqs), "the batch shrank while it was timed"
    driver.run_until_done()
    driver.clear_cache()
    return {"batch": batch, "wall_ms": wall_ms, "device_busy_ms": busy_ms,
            "host_gap_ms": wall_ms - busy_ms, "top_kernels": table}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama3-8b")
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    engine = LLMEngine(EngineConfig(model=args.model, device="cuda",
                                    scheduler=SchedulerConfig(max_running_requests=max(batches))))
    driver = EngineDriver(engine)
    driver.timed_first_token(driver.tokens(64))  # warm-up
    rows = []
    for batch in batches:
        for overlap in (False, True):
            engine.overlap = overlap
            row = {"overlap": overlap, **measure(driver, batch, args.context, args.steps)}
            rows.append(row)
            print(f"batch {batch:4d} overlap {overlap!s:5}: wall {row['wall_ms']:.3f} ms/step, device busy "
                  f"{row['device_busy_ms']:.3f}, host gap {row['host_gap_ms']:.3f}", flush=True)
    for row in rows:
        if row["overlap"]:
            print(f"\nbatch {row['batch']}, overlapped: top kernels\n{row['top_kernels']}")
    if args.out:
        result = {"config": vars(args) | {"out": str(args.out)}, "rows": rows,
                  "meta": environment(torch.device("cuda"))}
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
