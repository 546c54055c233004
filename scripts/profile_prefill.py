#!/usr/bin/env python3
"""Where a first token's time goes: host phases, device busy time and kernel launches of a lone
request's prefill, with the engine's piecewise CUDA graphs and without (eager), and what the same
forward pass takes replayed as one whole CUDA graph.

    python scripts/profile_prefill.py [--model random:llama3-8b] [--lengths 128,512]
                                      [--cached-prefix 8192] [--out prefill_profile.json]

A short prefill launches several hundred kernels from Python; when launching them takes longer
than running them, the device waits and the time to first token is the host's. The whole-graph
replay of the same pass (the same static inputs, captured once) is the device-bound time of that
pass; piecewise graphs (`preble/engine/piecewise_graphs.py`) leave one attention launch per layer
outside their graphs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from preble.bench.engine import environment
from preble.bench.engine_driver import EngineDriver, sync_device
from preble.engine.batch import ForwardBatch
from preble.engine.config import EngineConfig
from preble.engine.engine import LLMEngine


class PhaseClock:
    """Host seconds spent in wrapped callables (patched on their owners' instances)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: object, attr: str, name: str) -> None:
        setattr(owner, attr, _Timed(getattr(owner, attr), name, self.seconds))


class _Timed:
    """A callable that adds its wall time to `seconds[name]`; other attributes are the inner one's."""

    def __init__(self, inner: Callable, name: str, seconds: dict[str, float]) -> None:
        self._inner, self._name, self._seconds = inner, name, seconds

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self._seconds[self._name] += time.perf_counter() - t

    def __getattr__(self, attr: str):
        return getattr(self._inner, attr)


def first_tokens(driver: EngineDriver, prompt: Callable[[], list[int]], repeats: int) -> list[float]:
    return [driver.timed_first_token(prompt()) for _ in range(repeats)]


def device_profile(driver: EngineDriver, prompt: Callable[[], list[int]], repeats: int) -> dict:
    """Kernel time and launches per first token, and the host's top operators."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        first_tokens(driver, prompt, repeats)
    events = prof.key_averages()
    kernels = [e for e in events if e.self_device_time_total > 0]
    return {
        "device_busy_ms": sum(e.self_device_time_total for e in kernels) / 1e3 / repeats,
        "kernels_per_pass": sum(e.count for e in kernels) / repeats,
        "top_host_ops": events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50),
    }


def measure(driver: EngineDriver, clock: PhaseClock, name: str, prompt: Callable[[], list[int]],
            repeats: int) -> dict:
    first_tokens(driver, prompt, 2)  # warm-up: this shape's kernels
    clock.seconds.clear()
    ttft = first_tokens(driver, prompt, repeats)
    phases = {k: v * 1e3 / repeats for k, v in clock.seconds.items()}
    row = {"case": name, "ttft_ms_median": statistics.median(ttft) * 1e3, "ttft_ms_min": min(ttft) * 1e3,
           "host_ms_per_pass": phases, **device_profile(driver, prompt, repeats)}
    print(f"{name}: TTFT {row['ttft_ms_median']:.2f} ms (min {row['ttft_ms_min']:.2f}), device busy "
          f"{row['device_busy_ms']:.2f} ms, {row['kernels_per_pass']:.0f} kernels; host ms "
          + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()), flush=True)
    return row


def graph_bound(engine: LLMEngine, length: int, repeats: int) -> dict:
    """One fresh sequence of `length` tokens: the eager forward pass against its CUDA graph replay
    (free pages hold its K/V; nothing else runs), and whether both give the same logits."""
    runner, ps = engine.runner, engine.config.page_size
    device = engine.device
    pages = list(range(-(-length // ps)))
    batch = ForwardBatch(
        input_ids=torch.randint(3, 30000, (length,), device=device),
        positions=torch.arange(length, device=device),
        out_slots=torch.arange(length, device=device),
        starts=[0], lens=[length], page_tables=[pages],
        logit_indices=torch.tensor([length - 1], device=device), page_size=ps)
    plan = runner.backend.plan(batch)

    def timed(run: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
        times = []
        for _ in range(repeats):
            sync_device(device)
            t = time.perf_counter()
            out = run()
            sync_device(device)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3, out

    with torch.inference_mode():
        eager_ms, eager = timed(lambda: runner.model(batch, runner.backend, plan))
        eager = eager.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            runner.model(batch, runner.backend, plan)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                logits = runner.model(batch, runner.backend, plan)
        torch.cuda.current_stream().wait_stream(stream)
        graph_ms, _ = timed(lambda: (graph.replay(), logits)[1])
    same = bool(torch.equal(eager, logits))
    print(f"forward of {length} fresh tokens: eager {eager_ms:.2f} ms, graph replay {graph_ms:.2f} ms, "
          f"same logits {same}", flush=True)
    return {"tokens": length, "eager_ms": eager_ms, "graph_ms": graph_ms, "same_logits": same}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama3-8b")
    ap.add_argument("--lengths", default="128,512")
    ap.add_argument("--cached-prefix", type=int, default=8192)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--piecewise-max", type=int, default=EngineConfig.piecewise_graph_max_tokens,
                    help="the engine's piecewise_graph_max_tokens")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    engine = LLMEngine(EngineConfig(model=args.model, device="cuda", piecewise_graph_max_tokens=args.piecewise_max))
    driver = EngineDriver(engine)
    clock = PhaseClock()
    clock.wrap(engine.scheduler, "schedule", "schedule")
    clock.wrap(engine.runner, "prepare", "prepare")
    clock.wrap(engine.runner.backend, "plan", "plan")
    clock.wrap(engine.runner.model, "forward", "forward (launch)")
    clock.wrap(engine.runner, "sampler", "sample (launch)")
    clock.wrap(engine.runner, "collect", "wait for tokens")
    pieces, rows = engine.runner.piecewise, []
    clock.wrap(pieces, "run", "pieces (launch)")
    for mode in ("eager", "piecewise"):
        engine.runner.piecewise = pieces if mode == "piecewise" else None
        for n in lengths:
            rows.append({"mode": mode, **measure(driver, clock, f"{mode}, cold {n}",
                                                 lambda n=n: driver.tokens(n), args.repeats)})
        prefix = driver.tokens(args.cached_prefix)
        driver.timed_first_token(prefix)
        case = f"{mode}, {args.new_tokens} on a cached {args.cached_prefix}"
        rows.append({"mode": mode, **measure(driver, clock, case,
                                             lambda p=prefix: p + driver.tokens(args.new_tokens), args.repeats)})
        driver.clear_cache()
    graphs = [graph_bound(engine, n, args.repeats) for n in lengths]
    for row in (rows[0], rows[len(rows) // 2]):
        print(f"\n{row['case']}: top host operators\n{row['top_host_ops']}")
    if args.out:
        result = {"config": vars(args) | {"out": str(args.out)}, "rows": rows, "graph_bound": graphs,
                  "meta": environment(torch.device("cuda"))}
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
