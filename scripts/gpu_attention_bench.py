#!/usr/bin/env python3
"""Correctness sweep and timings of preble's Triton attention kernels on one CUDA GPU.

    python scripts/gpu_attention_bench.py            # from the repository root

1. A condensed correctness sweep (store_kv, extend, decode against a float32 reference that
   gathers K/V through the page table).
2. Device-to-device copy bandwidth (4 GiB), the yardstick for decode.
3. Extend (Llama-3-8B attention: Hq=32, Hkv=8, D=128, bf16, page_size 16, shuffled pages):
   (a) 1 x 8192 new tokens, (b) 16 x 512, (c) 128 new tokens on an 8192-token cached prefix;
   achieved TFLOP/s counting causal FLOPs only, next to torch's varlen_attn and SDPA on
   contiguous K/V where they run.
4. Decode: batch 1/8/32/64/128/256 at 1024 context, batch 1 at 8192 and 32768; achieved GB/s of
   K/V read, against the copy bandwidth.

Every variant is wrapped: a failure is recorded and the run goes on. Prints a table at the end
and writes $OUT/attention_bench.json when OUT is set.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HQ, HKV, D, PS, DTYPE = 32, 8, 128, 16, torch.bfloat16
RESULTS: dict = {"correctness": [], "extend": [], "decode": [], "errors": []}


def log(*a):
    print(*a, flush=True)


def load_ops():
    """preble's triton_ops; straight from its file when the package's other deps are missing."""
    try:
        from preble.engine.attention import triton_ops

        return triton_ops
    except Exception as e:  # noqa: BLE001
        log(f"(importing preble failed: {e!r}; loading triton_ops.py directly)")
        path = ROOT / "preble" / "engine" / "attention" / "triton_ops.py"
        spec = importlib.util.spec_from_file_location("preble_triton_ops", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod


def guarded(section: str, name: str):
    def wrap(fn):
        def run(*a, **k):
            try:
                return fn(*a, **k)
            except Exception as e:  # noqa: BLE001
                msg = f"{section}/{name}: {type(e).__name__}: {str(e)[:400]}"
                log("  FAILED", msg)
                RESULTS["errors"].append({"where": f"{section}/{name}", "error": msg,
                                          "trace": traceback.format_exc()[-2000:]})
                return None
        return run
    return wrap


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------

class Pool:
    """One layer's K/V pool with pages handed out in a shuffled order."""

    def __init__(self, num_slots: int, hkv: int, d: int, ps: int, dtype, seed: int = 0):
        g = torch.Generator(device="cuda")
        g.manual_seed(seed)
        self.ps = ps
        self.num_pages = -(-num_slots // ps)
        self.k = torch.randn((self.num_pages * ps, hkv, d), generator=g, device="cuda", dtype=torch.float32).to(dtype)
        self.v = torch.randn((self.num_pages * ps, hkv, d), generator=g, device="cuda", dtype=torch.float32).to(dtype)
        self.perm = torch.randperm(self.num_pages, generator=g, device="cuda").tolist()
        self.g = g

    def tables(self, totals: list[int], first_page: int = 0) -> list[list[int]]:
        """Page lists for sequences of `totals` tokens, from the shuffled order at `first_page`."""
        assert first_page + sum(max(1, -(-n // self.ps)) for n in totals) <= self.num_pages, "pool too small"
        out, i = [], first_page
        for n in totals:
            k = max(1, -(-n // self.ps))
            out.append(self.perm[i:i + k])
            i += k
        return out


def page_table(tables, align=16):
    width = -(-max(len(t) for t in tables) // align) * align
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device="cuda")


def i32(x):
    return torch.tensor(x, dtype=torch.int32, device="cuda")


def slots_of(pages, ps, n):
    p = torch.tensor(pages, dtype=torch.int64, device="cuda")
    return (p[:, None] * ps + torch.arange(ps, device="cuda")).flatten()[:n]


def reference(q, kc, vc, tables, starts, lens, ps, scale, chunk=512):
    group = q.shape[1] // kc.shape[1]
    out = torch.empty(q.shape, dtype=torch.float32, device="cuda")
    row = 0
    for pages, s, n in zip(tables, starts, lens):
        end = s + n
        sl = slots_of(pages, ps, end)
        k = kc[sl].float().repeat_interleave(group, 1)
        v = vc[sl].float().repeat_interleave(group, 1)
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            sc = torch.einsum("qhd,khd->hqk", q[row + c0:row + c1].float(), k) * scale
            qpos = s + torch.arange(c0, c1, device="cuda")
            sc = sc.masked_fill(torch.arange(end, device="cuda")[None, :] > qpos[:, None], float("-inf"))
            out[row + c0:row + c1] = torch.einsum("hqk,khd->qhd", sc.softmax(-1), v)
        row += n
    return out


def rel_err(out, ref):
    return ((out.float() - ref).norm() / ref.norm()).item()


# ------------------------------------------------------------------------------------------
# 1. correctness sweep
# ------------------------------------------------------------------------------------------

def correctness(ops):
    torch.backends.cuda.matmul.allow_tf32 = False
    cases = []

    def record(kind, desc, err, nan):
        ok = (not nan) and err <= 1e-2
        RESULTS["correctness"].append({"kind": kind, "case": desc, "rel_err": err, "unwritten": nan, "ok": ok})
        log(f"  {'ok  ' if ok else 'FAIL'} {kind:7s} {desc:60s} rel_err={err:.2e}{'  NaN left!' if nan else ''}")

    @guarded("correctness", "store_kv")
    def store():
        kc = torch.randn(5000, HKV, D, device="cuda").to(DTYPE)
        vc = torch.randn(5000, HKV, D, device="cuda").to(DTYPE)
        qkv = torch.randn(777, (HQ + 2 * HKV) * D, device="cuda").to(DTYPE)
        k = qkv[:, HQ * D:(HQ + HKV) * D].view(-1, HKV, D)
        v = qkv[:, (HQ + HKV) * D:].view(-1, HKV, D)
        sl = torch.randperm(5000, device="cuda")[:777]
        wk, wv = kc.clone(), vc.clone()
        wk[sl], wv[sl] = k, v
        ops.store_kv(kc, vc, sl, k, v)
        err = 0.0 if (torch.equal(kc, wk) and torch.equal(vc, wv)) else 1.0
        record("store", "777 rows, fused-qkv views", err, False)

    store()

    for hq, hkv, d in [(32, 8, 128), (8, 8, 64)]:
        for ps in (1, 16, 128):
            seqs = [(0, 1), (0, 17), (ps, 17), (3000, 1), (3001, 1031), (0, 1029), (5, 300)]

            @guarded("correctness", f"extend-{hq}-{hkv}-{d}-ps{ps}")
            def ext(hq=hq, hkv=hkv, d=d, ps=ps, seqs=seqs):
                pool = Pool(sum(s + n for s, n in seqs) + 10 * ps, hkv, d, ps, DTYPE, seed=ps + d)
                starts, lens = [s for s, _ in seqs], [n for _, n in seqs]
                tables = pool.tables([s + n for s, n in seqs])
                q = torch.randn(sum(lens), hq, d, device="cuda").to(DTYPE)
                params = ops.default_extend_params(d)
                bs, bm = ops.build_extend_block_map(starts, lens, params.block_m)
                out = torch.full_like(q, float("nan"))
                ops.extend_attention(q, pool.k, pool.v, page_table(tables), i32(starts), i32(lens),
                                     i32([0, *torch.tensor(lens).cumsum(0).tolist()]), max(lens), d ** -0.5, ps,
                                     block_seq=torch.from_numpy(bs).cuda(), block_m_start=torch.from_numpy(bm).cuda(),
                                     params=params, out=out)
                ref = reference(q, pool.k, pool.v, tables, starts, lens, ps, d ** -0.5)
                record("extend", f"Hq{hq}/Hkv{hkv} D{d} ps{ps} lens {lens}", rel_err(out, ref),
                       bool(torch.isnan(out).any()))

            ext()

            for splits in (1, 8):
                @guarded("correctness", f"decode-{hq}-{hkv}-{d}-ps{ps}-s{splits}")
                def dec(hq=hq, hkv=hkv, d=d, ps=ps, splits=splits):
                    kv = [1, 15, 16, 17, 4097, 300]
                    pool = Pool(sum(kv) + 10 * ps * len(kv), hkv, d, ps, DTYPE, seed=splits + ps)
                    tables = pool.tables(kv)
                    q = torch.randn(len(kv), hq, d, device="cuda").to(DTYPE)
                    out = torch.full_like(q, float("nan"))
                    scratch = ops.DecodeScratch.allocate(len(kv), hq, d, splits, "cuda")
                    scratch.mid_o.fill_(float("nan"))
                    scratch.mid_ml.fill_(float("nan"))
                    ops.decode_attention(q, pool.k, pool.v, page_table(tables), i32(kv), d ** -0.5, ps, splits,
                                         scratch=scratch, out=out)
                    ref = reference(q, pool.k, pool.v, tables, [n - 1 for n in kv], [1] * len(kv), ps, d ** -0.5)
                    record("decode", f"Hq{hq}/Hkv{hkv} D{d} ps{ps} splits{splits} kv {kv}", rel_err(out, ref),
                           bool(torch.isnan(out).any()))

                dec()
    return cases


# ------------------------------------------------------------------------------------------
# 2-4. timings
# ------------------------------------------------------------------------------------------

def bench(fn, rep=100):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")  # ms


def copy_bandwidth():
    n = 4 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.fill_(1)
    ms = bench(lambda: b.copy_(a), rep=200)
    a = b = None  # free the 8 GiB before the kernels run
    torch.cuda.empty_cache()
    gbs = 2 * n / (ms * 1e-3) / 1e9  # bytes read + written
    RESULTS["copy_bw_GBs"] = gbs
    log(f"  device-to-device copy of 4 GiB: {ms:.3f} ms -> {gbs:.0f} GB/s (read + write)")
    return gbs


def time_store_kv(ops, pool: Pool):
    """store_kv (one launch, K and V) against two torch index_put_ calls, as KVPool.write does."""
    for t in (64, 8192):
        @guarded("store_kv", f"T{t}")
        def one(t=t):
            k = torch.randn(t, HKV, D, device="cuda").to(DTYPE)
            v = torch.randn(t, HKV, D, device="cuda").to(DTYPE)
            slots = torch.randperm(pool.k.shape[0], device="cuda")[:t]
            tri_ms = bench(lambda: ops.store_kv(pool.k, pool.v, slots, k, v))
            tri_host = host_us_per_call(lambda: ops.store_kv(pool.k, pool.v, slots, k, v))

            def torch_write():
                pool.k[slots] = k
                pool.v[slots] = v

            ref_ms = bench(torch_write)
            ref_host = host_us_per_call(torch_write)
            r = {"tokens": t, "triton_us": tri_ms * 1e3, "index_put_us": ref_ms * 1e3,
                 "triton_host_us": tri_host, "index_put_host_us": ref_host}
            RESULTS.setdefault("store_kv", []).append(r)
            log(f"  store_kv T={t:5d}: triton {tri_ms * 1e3:6.1f} us (host loop {tri_host:5.1f}) | "
                f"2x index_put {ref_ms * 1e3:6.1f} us (host loop {ref_host:5.1f})")

        one()


def causal_flops(starts, lens, hq, d):
    pairs = sum(n * s + n * (n + 1) // 2 for s, n in zip(starts, lens))
    return 4 * d * hq * pairs


def time_extend(ops, pool: Pool, name: str, starts, lens):
    log(f"  extend {name}")
    tables = pool.tables([s + n for s, n in zip(starts, lens)])
    T = sum(lens)
    q = torch.randn(T, HQ, D, device="cuda").to(DTYPE)
    pt, st, ln = page_table(tables), i32(starts), i32(lens)
    cu = i32([0, *torch.tensor(lens).cumsum(0).tolist()])
    flops = causal_flops(starts, lens, HQ, D)
    scale = D ** -0.5
    rows = []
    outs = {}

    def add(variant, ms, note="", err=None):
        r = {"case": name, "variant": variant, "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12 if ms else None,
             "note": note, "rel_err_vs_triton": err}
        rows.append(r)
        RESULTS["extend"].append(r)
        log(f"    {variant:28s} {ms * 1e3:9.1f} us  {r['tflops']:6.1f} TFLOP/s  {note}"
            + (f" (rel diff vs triton {err:.1e})" if err is not None else ""))

    # The backend takes the "small" parameters when the step has <= 3 query blocks of 128 rows
    # (TritonAttentionConfig.extend_small_max_blocks).
    picked = "small" if sum(-(-n // 128) for n in lens) <= 3 else "default"
    for kind in ("default", "small"):
        @guarded("extend", f"{name}/triton-{kind}")
        def tri(kind=kind):
            params = ops.default_extend_params(D, small=kind == "small")
            bs, bm = ops.build_extend_block_map(starts, lens, params.block_m)
            bs, bm = torch.from_numpy(bs).cuda(), torch.from_numpy(bm).cuda()
            out = torch.empty_like(q)

            def fn():
                ops.extend_attention(q, pool.k, pool.v, pt, st, ln, cu, max(lens), scale, PS,
                                     block_seq=bs, block_m_start=bm, params=params, out=out)

            fn()
            outs[kind] = out.clone()
            add(f"triton paged {kind}{'*' if kind == picked else ''}", bench(fn),
                f"bm{params.block_m} bn{params.block_n} w{params.num_warps} s{params.num_stages}")

        tri()

    base = outs.get("default", outs.get("small"))
    # contiguous K/V of every sequence (prefix + new), for the torch baselines
    kv_slots = torch.cat([slots_of(t, PS, s + n) for t, s, n in zip(tables, starts, lens)])
    kc, vc = pool.k[kv_slots].contiguous(), pool.v[kv_slots].contiguous()
    cu_k = i32([0, *torch.tensor([s + n for s, n in zip(starts, lens)]).cumsum(0).tolist()])

    @guarded("extend", f"{name}/varlen_attn")
    def varlen():
        from torch.nn.attention.varlen import varlen_attn

        params = inspect.signature(varlen_attn).parameters
        kw = {}
        k_, v_ = kc, vc
        if "is_causal" in params:
            kw["is_causal"] = True
        else:
            kw["window_size"] = (-1, 0)
        if "scale" in params:
            kw["scale"] = scale
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            k_, v_ = kc.repeat_interleave(HQ // HKV, 1), vc.repeat_interleave(HQ // HKV, 1)
        maxk = max(s + n for s, n in zip(starts, lens))

        def fn():
            return varlen_attn(q, k_, v_, cu, cu_k, max(lens), maxk, **kw)

        o = fn()
        err = rel_err(o, base.float()) if base is not None else None
        add("torch varlen_attn", bench(fn), "contiguous K/V" + ("" if "enable_gqa" in params else ", K/V expanded"),
            err)

    varlen()

    @guarded("extend", f"{name}/sdpa")
    def sdpa():
        import torch.nn.functional as F

        B, L = len(lens), max(lens)
        if len(set(lens)) != 1 or len(set(starts)) != 1:
            raise RuntimeError("SDPA baseline needs equal-length sequences")
        S = starts[0]
        qq = q.view(B, L, HQ, D).transpose(1, 2).contiguous()
        kk = kc.view(B, S + L, HKV, D).transpose(1, 2).contiguous()
        vv = vc.view(B, S + L, HKV, D).transpose(1, 2).contiguous()
        if S == 0:
            kw, note = {"is_causal": True}, "is_causal"
        else:  # SDPA's is_causal is top-left aligned: give the bottom-right mask explicitly
            qpos = S + torch.arange(L, device="cuda")
            kw, note = {"attn_mask": torch.arange(S + L, device="cuda")[None, :] <= qpos[:, None]}, "explicit mask"
        try:
            fn = lambda: F.scaled_dot_product_attention(qq, kk, vv, scale=scale, enable_gqa=True, **kw)  # noqa: E731
            o = fn()
            note += ", enable_gqa"
        except RuntimeError:
            ke, ve = kk.repeat_interleave(HQ // HKV, 1), vv.repeat_interleave(HQ // HKV, 1)
            fn = lambda: F.scaled_dot_product_attention(qq, ke, ve, scale=scale, **kw)  # noqa: E731
            o = fn()
            note += ", K/V expanded"
        err = rel_err(o.transpose(1, 2).reshape(-1, HQ, D), base.float()) if base is not None else None
        add("torch sdpa", bench(fn), note, err)

    sdpa()
    return rows


def graph_ms_per_call(calls, reps=20):
    """Device time of one call, from a CUDA graph replaying all `calls` back to back (no launch
    overhead; the calls read disjoint pages, so together they overflow L2 and each reads cold)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    graph.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2] / len(calls)


def host_us_per_call(fn, iters=200):
    """Wall time per eager call in a loop (launch-bound when larger than the device time)."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters * 1e6


def time_decode(ops, pool: Pool, batch: int, ctx: int, num_sms: int, extra_splits=()):
    name = f"B={batch} ctx={ctx}"
    log(f"  decode {name}")
    kv = [ctx] * batch
    kv_bytes = sum(kv) * HKV * D * 2 * DTYPE.itemsize
    pages_per_call = batch * -(-ctx // PS)
    copies = max(1, min(64, -(-200_000_000 // kv_bytes), pool.num_pages // pages_per_call))
    pts = [page_table(pool.tables(kv, first_page=i * pages_per_call)) for i in range(copies)]
    q = torch.randn(batch, HQ, D, device="cuda").to(DTYPE)
    kl = i32(kv)
    auto = ops.pick_num_splits(batch, HKV, num_sms)
    for splits in [auto, *[s for s in extra_splits if s != auto]]:
        @guarded("decode", f"{name}/splits{splits}")
        def one(splits=splits):
            scratch = ops.DecodeScratch.allocate(batch, HQ, D, splits, "cuda")
            out = torch.empty_like(q)

            def call(pt):
                return lambda: ops.decode_attention(q, pool.k, pool.v, pt, kl, D ** -0.5, PS, splits,
                                                    scratch=scratch, out=out)

            fn = call(pts[0])
            fn()
            eager_ms = bench(fn)
            host_us = host_us_per_call(fn)
            ms = graph_ms_per_call([call(pt) for pt in pts])
            gbs = kv_bytes / (ms * 1e-3) / 1e9
            r = {"case": name, "batch": batch, "ctx": ctx, "splits": splits, "auto": splits == auto,
                 "graph_us": ms * 1e3, "GBs": gbs, "frac_of_copy_bw": gbs / RESULTS.get("copy_bw_GBs", float("nan")),
                 "eager_us": eager_ms * 1e3, "host_us_per_call": host_us, "graph_copies": copies}
            RESULTS["decode"].append(r)
            log(f"    splits {splits:2d}{'*' if splits == auto else ' '} graph {ms * 1e3:7.1f} us {gbs:6.0f} GB/s"
                f" ({100 * r['frac_of_copy_bw']:.0f}% of copy) | eager {eager_ms * 1e3:6.1f} us,"
                f" host loop {host_us:5.1f} us/call")

        one()


def main():
    t0 = time.time()
    if not torch.cuda.is_available():
        log("no CUDA device")
        return 1
    import triton

    dev = torch.cuda.get_device_properties(0)
    RESULTS.update(device=dev.name, sms=dev.multi_processor_count, torch=torch.__version__,
                   triton=triton.__version__)
    log(f"{dev.name}, {dev.multi_processor_count} SMs, torch {torch.__version__}, triton {triton.__version__}")
    ops = load_ops()

    log("\n[1] correctness sweep")
    correctness(ops)
    log(f"  ({time.time() - t0:.0f}s so far)")

    log("\n[2] copy bandwidth")
    guarded("bandwidth", "copy")(copy_bandwidth)()

    pool = Pool(256 * 1024 + 64 * 1024, HKV, D, PS, DTYPE, seed=1)
    log("\n[2b] store_kv")
    time_store_kv(ops, pool)
    log("\n[3] extend (Hq=32 Hkv=8 D=128 bf16 page 16); * = parameters the backend would pick")
    for name, starts, lens in [("(a) 1x8192", [0], [8192]),
                               ("(b) 16x512", [0] * 16, [512] * 16),
                               ("(c) 128 on 8192 prefix", [8192], [128])]:
        guarded("extend", name)(time_extend)(ops, pool, name, starts, lens)
    log(f"  ({time.time() - t0:.0f}s so far)")

    log("\n[4] decode (Hq=32 Hkv=8 D=128 bf16 page 16); * = splits the backend would pick")
    for batch in (1, 8, 32, 64, 128, 256):
        guarded("decode", f"B{batch}")(time_decode)(ops, pool, batch, 1024, dev.multi_processor_count,
                                                    extra_splits=(1, 2, 8) if batch <= 32 else ())
    for ctx in (8192, 32768):
        guarded("decode", f"ctx{ctx}")(time_decode)(ops, pool, 1, ctx, dev.multi_processor_count,
                                                    extra_splits=(8, 64))

    RESULTS["seconds"] = time.time() - t0
    summary()
    out_dir = os.environ.get("OUT")
    if out_dir:
        path = Path(out_dir) / "attention_bench.json"
        path.write_text(json.dumps(RESULTS, indent=1, default=str))
        log(f"wrote {path}")
    bad = [c for c in RESULTS["correctness"] if not c["ok"]]
    return 1 if bad else 0


def summary():
    log("\n" + "=" * 100)
    ok = sum(c["ok"] for c in RESULTS["correctness"])
    log(f"correctness: {ok}/{len(RESULTS['correctness'])} ok; "
        f"worst rel_err {max((c['rel_err'] for c in RESULTS['correctness']), default=float('nan')):.2e}")
    log(f"copy bandwidth: {RESULTS.get('copy_bw_GBs', float('nan')):.0f} GB/s")
    for r in RESULTS.get("store_kv", []):
        log(f"store_kv T={r['tokens']}: triton {r['triton_us']:.1f} us vs 2x index_put {r['index_put_us']:.1f} us")
    log(f"\n{'extend case':26s} {'variant':28s} {'us':>9s} {'TFLOP/s':>8s}  note")
    for r in RESULTS["extend"]:
        log(f"{r['case']:26s} {r['variant']:28s} {r['ms'] * 1e3:9.1f} {r['tflops']:8.1f}  {r['note']}")
    log(f"\n{'decode case':18s} {'splits':>6s} {'graph us':>9s} {'GB/s':>6s} {'%copy':>6s} {'eager us':>9s} "
        f"{'host us':>8s}")
    for r in RESULTS["decode"]:
        log(f"{r['case']:18s} {r['splits']:5d}{'*' if r['auto'] else ' '} {r['graph_us']:9.1f} {r['GBs']:6.0f} "
            f"{100 * r['frac_of_copy_bw']:5.0f}% {r['eager_us']:9.1f} {r['host_us_per_call']:8.1f}")
    log("graph us: device time per call inside a CUDA graph, cold L2 (what a captured decode step sees);"
        " eager us: do_bench of one eager call (includes launch cost); host us: wall time per eager call in a loop")
    if RESULTS["errors"]:
        log(f"\n{len(RESULTS['errors'])} variant(s) failed:")
        for e in RESULTS["errors"]:
            log("  ", e["error"][:300])
    log(f"total {RESULTS.get('seconds', 0):.0f}s")


if __name__ == "__main__":
    sys.exit(main())
