#!/usr/bin/env python3
"""The decode step's matmuls on their own: Llama-3-8B's linear layers at small batches, timed as
the engine runs them (bf16 `F.linear` on an [out, in] weight) and in two other forms that reach
other cuBLAS kernels (the weight stored [in, out]; the cuBLASLt path), against the time to read the
weight once at the copy bandwidth measured here.

    python scripts/gemv_variants.py [--batches 1,8,64,256] [--out gemv_variants.json]

Each case is captured 20 times in a CUDA graph and replayed, so launch gaps do not count.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from preble.bench.engine import device_ceilings, environment

# (name, in features, out features) of one Llama-3-8B layer, and the output head.
SHAPES = (("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096),
          ("lm_head", 4096, 128256))
REPEATS = 20


def graph_us(fn) -> float:
    """Microseconds per call of `fn`, replayed from a CUDA graph of REPEATS calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPEATS):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (5 * REPEATS)


def measure_layer(name: str, k: int, n: int, batches: list[int], copy_gbps: float) -> list[dict]:
    device = torch.device("cuda")
    w = torch.randn(n, k, device=device, dtype=torch.bfloat16) * 0.02
    wt = w.t().contiguous()
    floor_us = w.numel() * w.element_size() / (copy_gbps * 1e3)
    rows = []
    for m in batches:
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        ref = F.linear(x, w)
        variants = {"linear": lambda x=x: F.linear(x, w), "matmul_in_out": lambda x=x: x @ wt}
        row = {"layer": name, "in": k, "out": n, "batch": m, "floor_us": floor_us}
        for label, fn in variants.items():
            torch.testing.assert_close(fn(), ref, rtol=2e-2, atol=2e-2)
            row[label] = graph_us(fn)
        torch.backends.cuda.preferred_blas_library("cublaslt")
        row["linear_cublaslt"] = graph_us(variants["linear"])
        torch.backends.cuda.preferred_blas_library("cublas")
        rows.append(row)
        print(f"{name:8s} M={m:4d}: floor {floor_us:7.1f} us | " + " | ".join(
            f"{v} {row[v]:7.1f}" for v in ("linear", "matmul_in_out", "linear_cublaslt")), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device("cuda")
    copy_gbps = device_ceilings(device, torch.bfloat16)["copy_gbps"]
    batches = [int(b) for b in args.batches.split(",")]
    rows = [row for name, k, n in SHAPES for row in measure_layer(name, k, n, batches, copy_gbps)]
    if args.out:
        args.out.write_text(json.dumps({"copy_gbps": copy_gbps, "rows": rows, "meta": environment(device)},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
