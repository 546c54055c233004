#!/usr/bin/env python3
"""Where a decode step's time goes: host phases (schedule, execute, update) and the top kernels.

    python scripts/profile_decode.py [--model random:llama3-8b] [--batches 1,64] [--context 1024]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from preble import SamplingParams
from preble.engine.config import EngineConfig
from preble.engine.engine import LLMEngine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama3-8b")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    engine = LLMEngine(EngineConfig(model=args.model, device="cuda"))
    gen = torch.Generator().manual_seed(0)
    for batch in map(int, args.batches.split(",")):
        reqs = [engine.add_request(torch.randint(3, 30000, (args.context,), generator=gen).tolist(),
                                   SamplingParams(max_tokens=args.steps * 3, temperature=0.0, ignore_eos=True))
                for _ in range(batch)]
        while any(not r.output_token_ids for r in reqs):
            engine.step()
        phases = {"schedule": 0.0, "execute": 0.0, "update": 0.0}
        for _ in range(args.steps):
            t0 = time.perf_counter()
            out = engine.scheduler.schedule()
            t1 = time.perf_counter()
            sampled = engine.runner.execute(out)
            t2 = time.perf_counter()
            engine.scheduler.update(out, sampled)
            t3 = time.perf_counter()
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[k] += v
        print(f"batch {batch}: " + ", ".join(f"{k} {v / args.steps * 1e3:.3f} ms" for k, v in phases.items()))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                engine.step()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
        for r in reqs:
            engine.abort(r.request_id)
        engine.cache.evict(engine.cache.evictable_pages)


if __name__ == "__main__":
    main()
