#!/usr/bin/env python3
"""The decode step's matmuls on their own: Llama-3-8B's linear layers at small batches, timed as
the engine runs them (bf16 `F.linear` on an [out, in] weight), in two other forms that reach
other cuBLAS kernels (the weight stored [in, out]; the cuBLASLt path), and, at batches up to 16,
as a Triton kernel without split-K (each program reads whole rows of the weight, so no second
kernel sums partial results) at each of a few tile shapes, against the time to read the weight
once at the copy bandwidth measured here.

    python scripts/gemv_variants.py [--batches 1,8,64,256] [--out gemv_variants.json]

Each case is captured 20 times in a CUDA graph and replayed, so launch gaps do not count.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from preble.bench.engine import device_ceilings, environment

# (name, in features, out features) of one Llama-3-8B layer, and the output head.
SHAPES = (("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096),
          ("lm_head", 4096, 128256))
REPEATS = 20
TRITON_MAX_BATCH = 16  # the Triton kernel pads the batch to one 16-row tile
# (rows of the weight per program, columns per step, warps, pipeline stages) tried for each case
TRITON_TILES = tuple((bn, bk, 4, st) for bn in (16, 32, 64) for bk in (128, 256, 512) for st in (3, 4)
                     if bn * bk <= 16384)


@triton.jit
def _skinny_matmul(X, W, Y, M, N, K, stride_xm, stride_wn, stride_ym,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Y[:M, block] = X[:M] @ W[block].T for one block of BLOCK_N weight rows, over all of K."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, 16)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(X + rm[:, None] * stride_xm + (k0 + rk)[None, :], mask=rm[:, None] < M, other=0.0)
        w = tl.load(W + rn[:, None] * stride_wn + (k0 + rk)[None, :], mask=rn[:, None] < N, other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    tl.store(Y + rm[:, None] * stride_ym + rn[None, :], acc.to(Y.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def skinny_matmul(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, tile: tuple[int, int, int, int]) -> torch.Tensor:
    """x [M, K] @ w [N, K].T into out [M, N], M <= 16, K a multiple of the tile's columns."""
    bn, bk, warps, stages = tile
    n, k = w.shape
    _skinny_matmul[(triton.cdiv(n, bn),)](x, w, out, x.shape[0], n, k, x.stride(0), w.stride(0), out.stride(0),
                                          BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return out


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
        if m <= TRITON_MAX_BATCH:
            try:
                row["triton"] = triton_best(x, w, ref)
            except Exception as err:  # an exploratory kernel: its failure is recorded, the cuBLAS rows kept
                row["triton_error"] = f"{type(err).__name__}: {err}"[:500]
        rows.append(row)
        print(f"{name:8s} M={m:4d}: floor {floor_us:7.1f} us | " + " | ".join(
            f"{v} {row[v]:7.1f}" for v in ("linear", "matmul_in_out", "linear_cublaslt")) +
            (f" | triton {row['triton']['us']:7.1f} {row['triton']['tile']}" if "triton" in row else "") +
            (f" | triton failed: {row['triton_error'][:200]}" if "triton_error" in row else ""), flush=True)
    return rows


def triton_best(x: torch.Tensor, w: torch.Tensor, ref: torch.Tensor) -> dict:
    """The Triton kernel's fastest tile for this case (each checked against `ref` first), and
    every tile's time."""
    out = torch.empty_like(ref)
    times = {}
    for tile in TRITON_TILES:
        if w.shape[1] % tile[1]:
            continue
        try:
            torch.testing.assert_close(skinny_matmul(x, w, out, tile), ref, rtol=2e-2, atol=2e-2)
            times[tile] = graph_us(lambda tile=tile: skinny_matmul(x, w, out, tile))
        except triton.runtime.errors.OutOfResources:
            continue
    best = min(times, key=times.get)
    return {"us": times[best], "tile": list(best), "tiles": {"x".join(map(str, t)): us for t, us in times.items()}}


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
