"""Triton attention kernels and backend against float64 references, on the GPU.

Every test is marked `gpu` (skipped by conftest without CUDA). Triton is imported inside the
tests only, so collecting this file on a CPU machine needs no Triton. Each test draws fresh random
inputs (never zeros), scatters each sequence over shuffled (non-contiguous) pages, poisons the
outputs with NaN before the kernel runs, and checks every element was written.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

TOL = 1e-2  # relative Frobenius error allowed for bf16 / fp16


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _ops():
    from preble.engine.attention import triton_ops

    return triton_ops


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    return g


def _randn(shape, dtype, g, scale=1.0):
    return (torch.randn(shape, generator=g, device="cuda", dtype=torch.float32) * scale).to(dtype)


def _make_pool(kv_totals, page_size, hkv, d, dtype, g, spare_pages=5):
    """Random K/V pool, and for each sequence a shuffled list of pages covering `kv_totals[i]`."""
    need = [max(1, -(-n // page_size)) for n in kv_totals]
    num_pages = sum(need) + spare_pages
    k_cache = _randn((num_pages * page_size, hkv, d), dtype, g)
    v_cache = _randn((num_pages * page_size, hkv, d), dtype, g)
    perm = torch.randperm(num_pages, generator=g, device="cuda").tolist()
    tables, i = [], 0
    for n in need:
        tables.append(perm[i:i + n])
        i += n
    return k_cache, v_cache, tables


def _page_table(tables, pad_to=None):
    width = max(len(t) for t in tables)
    if pad_to:
        width = max(width, pad_to)
    # Pad with a real page id (never read) rather than garbage.
    rows = [t + [t[0]] * (width - len(t)) for t in tables]
    return torch.tensor(rows, dtype=torch.int32, device="cuda")


def _slots(pages, page_size, n):
    p = torch.tensor(pages, dtype=torch.int64, device="cuda")
    return (p[:, None] * page_size + torch.arange(page_size, device="cuda")).flatten()[:n]


def _reference(q, k_cache, v_cache, tables, starts, lens, page_size, scale, chunk=256):
    """float64 attention: gather each sequence's K/V through its page list, causal softmax."""
    hq, hkv = q.shape[1], k_cache.shape[1]
    group = hq // hkv
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    row = 0
    for pages, start, n in zip(tables, starts, lens):
        end = start + n
        slots = _slots(pages, page_size, end)
        k = k_cache[slots].double().repeat_interleave(group, dim=1)  # [end, Hq, D]
        v = v_cache[slots].double().repeat_interleave(group, dim=1)
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            qq = q[row + c0:row + c1].double()
            s = torch.einsum("qhd,khd->hqk", qq, k) * scale
            qpos = start + torch.arange(c0, c1, device=q.device)
            visible = torch.arange(end, device=q.device)[None, :] <= qpos[:, None]
            s = s.masked_fill(~visible, float("-inf"))
            out[row + c0:row + c1] = torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), v)
        row += n
    return out


def _rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def _check(out, ref, tol=TOL):
    assert not torch.isnan(out).any(), "some output elements were never written (NaN poison left)"
    assert torch.isfinite(out).all()
    err = _rel_err(out, ref)
    assert err <= tol, f"relative error {err:.3e} > {tol}"
    return err


def _extend_inputs(seqs, page_size, hq, hkv, d, dtype, seed):
    g = _gen(seed)
    starts = [s for s, _ in seqs]
    lens = [n for _, n in seqs]
    k_cache, v_cache, tables = _make_pool([s + n for s, n in seqs], page_size, hkv, d, dtype, g)
    q = _randn((sum(lens), hq, d), dtype, g)
    dev = dict(
        page_table=_page_table(tables),
        starts=torch.tensor(starts, dtype=torch.int32, device="cuda"),
        lens=torch.tensor(lens, dtype=torch.int32, device="cuda"),
        cu_q=torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda"),
    )
    return q, k_cache, v_cache, tables, starts, lens, dev


# Lengths 1, 17 and 1000+; prefixes of 0, one page, a few tokens and ~3000 tokens (many pages).
def _mixed_seqs(page_size):
    return [(0, 1), (0, 17), (page_size, 17), (page_size, 1), (3000, 1), (3000, 17),
            (0, 1029), (3001, 1031), (5, 300), (1, 1)]


SHAPES = [(32, 8, 128), (8, 8, 128), (32, 8, 64), (8, 8, 64)]  # (Hq, Hkv, D)


# ---------------------------------------------------------------------------------------------
# store_kv
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("hkv,d", [(8, 128), (8, 64), (3, 64)])
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32])
def test_store_kv(hkv, d, slot_dtype):
    ops = _ops()
    g = _gen(1)
    num_slots, t = 4096, 1000
    k_cache = _randn((num_slots, hkv, d), torch.bfloat16, g)
    v_cache = _randn((num_slots, hkv, d), torch.bfloat16, g)
    # K and V as views of one fused projection output (non-contiguous token stride).
    hq = 2 * hkv
    qkv = _randn((t, (hq + 2 * hkv) * d), torch.bfloat16, g)
    k = qkv[:, hq * d:(hq + hkv) * d].view(t, hkv, d)
    v = qkv[:, (hq + hkv) * d:].view(t, hkv, d)
    slots = torch.randperm(num_slots, generator=g, device="cuda")[:t].to(slot_dtype)
    slots[::97] = -1  # skipped
    want_k, want_v = k_cache.clone(), v_cache.clone()
    keep = slots >= 0
    want_k[slots[keep].long()] = k[keep]
    want_v[slots[keep].long()] = v[keep]
    ops.store_kv(k_cache, v_cache, slots, k, v)
    torch.cuda.synchronize()
    assert torch.equal(k_cache, want_k)
    assert torch.equal(v_cache, want_v)


# ---------------------------------------------------------------------------------------------
# extend
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("page_size", [1, 16, 128])
@pytest.mark.parametrize("hq,hkv,d", SHAPES)
def test_extend_mixed_batch(hq, hkv, d, page_size, dtype):
    ops = _ops()
    seqs = _mixed_seqs(page_size)
    random.Random(page_size * 1000 + hq + d).shuffle(seqs)
    q, kc, vc, tables, starts, lens, dev = _extend_inputs(seqs, page_size, hq, hkv, d, dtype,
                                                          seed=hq * 7 + d + page_size)
    scale = 1.0 / math.sqrt(d)
    params = ops.default_extend_params(d)
    bs, bm = ops.build_extend_block_map(starts, lens, params.block_m)
    out = torch.full_like(q, float("nan"))
    ops.extend_attention(q, kc, vc, dev["page_table"], dev["starts"], dev["lens"], dev["cu_q"], max(lens),
                         scale, page_size, block_seq=torch.from_numpy(bs).cuda(),
                         block_m_start=torch.from_numpy(bm).cuda(), params=params, out=out)
    _check(out, _reference(q, kc, vc, tables, starts, lens, page_size, scale))


@pytest.mark.gpu
@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("use_map", [False, True])
def test_extend_grid_variants(use_map, small):
    """The fallback (q blocks x heads, batch) grid with early exit, and the small-launch blocks."""
    ops = _ops()
    hq, hkv, d, ps = 32, 8, 128, 16
    seqs = [(0, 700), (17, 1), (2048, 129), (0, 2), (100, 64)]
    q, kc, vc, tables, starts, lens, dev = _extend_inputs(seqs, ps, hq, hkv, d, torch.bfloat16, seed=11)
    scale = 1.0 / math.sqrt(d)
    params = ops.default_extend_params(d, small=small)
    kw = {}
    if use_map:
        bs, bm = ops.build_extend_block_map(starts, lens, params.block_m)
        kw = dict(block_seq=torch.from_numpy(bs).cuda(), block_m_start=torch.from_numpy(bm).cuda())
    out = torch.full_like(q, float("nan"))
    ops.extend_attention(q, kc, vc, dev["page_table"], dev["starts"], dev["lens"], dev["cu_q"], max(lens),
                         scale, ps, params=params, out=out, **kw)
    _check(out, _reference(q, kc, vc, tables, starts, lens, ps, scale))


@pytest.mark.gpu
def test_extend_peaked_scores_and_strided_q():
    """Large-magnitude scores (online-softmax rescaling) and q as a view of a fused qkv tensor."""
    ops = _ops()
    hq, hkv, d, ps = 32, 8, 128, 16
    seqs = [(0, 1500), (4000, 33), (16, 1)]
    g = _gen(5)
    lens = [n for _, n in seqs]
    starts = [s for s, _ in seqs]
    kc, vc, tables = _make_pool([s + n for s, n in seqs], ps, hkv, d, torch.bfloat16, g)
    qkv = _randn((sum(lens), (hq + 2 * hkv) * d), torch.bfloat16, g, scale=4.0)
    q = qkv[:, :hq * d].view(-1, hq, d)
    scale = 1.0 / math.sqrt(d)
    out = torch.full((sum(lens), hq, d), float("nan"), dtype=torch.bfloat16, device="cuda")
    ops.extend_attention(q, kc, vc, _page_table(tables), torch.tensor(starts, dtype=torch.int32, device="cuda"),
                         torch.tensor(lens, dtype=torch.int32, device="cuda"),
                         torch.tensor([0, lens[0], lens[0] + lens[1], sum(lens)], dtype=torch.int32, device="cuda"),
                         max(lens), scale, ps, out=out)
    _check(out, _reference(q, kc, vc, tables, starts, lens, ps, scale))


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_float32_pool_is_exact(d):
    """float32 pools use IEEE fp32 products (no TF32): error at fp32 rounding level."""
    ops = _ops()
    hq, hkv, ps = 8, 2, 16
    seqs = [(0, 130), (33, 17), (200, 1)]
    q, kc, vc, tables, starts, lens, dev = _extend_inputs(seqs, ps, hq, hkv, d, torch.float32, seed=12)
    out = torch.full_like(q, float("nan"))
    ops.extend_attention(q, kc, vc, dev["page_table"], dev["starts"], dev["lens"], dev["cu_q"], max(lens),
                         d ** -0.5, ps, out=out)
    _check(out, _reference(q, kc, vc, tables, starts, lens, ps, d ** -0.5), tol=1e-5)
    kv_lens = [s + n for s, n in seqs]
    qd = _randn((len(seqs), hq, d), torch.float32, _gen(13))
    for splits in (1, 5):
        out = torch.full_like(qd, float("nan"))
        ops.decode_attention(qd, kc, vc, dev["page_table"], torch.tensor(kv_lens, dtype=torch.int32, device="cuda"),
                             d ** -0.5, ps, splits, out=out)
        _check(out, _reference(qd, kc, vc, tables, [n - 1 for n in kv_lens], [1] * len(seqs), ps, d ** -0.5),
               tol=1e-5)


@pytest.mark.gpu
def test_head_dim_256_untuned_defaults():
    """head_dim 256 (untuned parameters) still compiles within shared memory and is correct."""
    ops = _ops()
    hq, hkv, d, ps = 8, 2, 256, 16
    seqs = [(0, 200), (100, 17), (3, 1)]
    q, kc, vc, tables, starts, lens, dev = _extend_inputs(seqs, ps, hq, hkv, d, torch.bfloat16, seed=8)
    out = torch.full_like(q, float("nan"))
    ops.extend_attention(q, kc, vc, dev["page_table"], dev["starts"], dev["lens"], dev["cu_q"], max(lens),
                         d ** -0.5, ps, out=out)
    _check(out, _reference(q, kc, vc, tables, starts, lens, ps, d ** -0.5))
    kv_lens = [s + n for s, n in seqs]
    qd = _randn((len(seqs), hq, d), torch.bfloat16, _gen(9))
    out = torch.full_like(qd, float("nan"))
    ops.decode_attention(qd, kc, vc, dev["page_table"], torch.tensor(kv_lens, dtype=torch.int32, device="cuda"),
                         d ** -0.5, ps, 4, out=out)
    _check(out, _reference(qd, kc, vc, tables, [n - 1 for n in kv_lens], [1] * len(seqs), ps, d ** -0.5))


# ---------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------

DECODE_KV_LENS = [1, 15, 16, 17, 4097, 300, 1, 64, 129]


def _decode_inputs(kv_lens, page_size, hq, hkv, d, dtype, seed):
    g = _gen(seed)
    kc, vc, tables = _make_pool(kv_lens, page_size, hkv, d, dtype, g)
    q = _randn((len(kv_lens), hq, d), dtype, g)
    return q, kc, vc, tables


@pytest.mark.gpu
@pytest.mark.parametrize("num_splits", [1, 8])
@pytest.mark.parametrize("page_size", [1, 16, 128])
@pytest.mark.parametrize("hq,hkv,d", SHAPES)
def test_decode(hq, hkv, d, page_size, num_splits):
    ops = _ops()
    kv_lens = list(DECODE_KV_LENS)
    random.Random(hq + d + page_size).shuffle(kv_lens)
    dtype = torch.float16 if (d == 64 and page_size == 16) else torch.bfloat16
    q, kc, vc, tables = _decode_inputs(kv_lens, page_size, hq, hkv, d, dtype, seed=hq + d + page_size + num_splits)
    scale = 1.0 / math.sqrt(d)
    out = torch.full_like(q, float("nan"))
    scratch = ops.DecodeScratch.allocate(len(kv_lens) + 3, hq, d, num_splits, "cuda")
    scratch.mid_o.fill_(float("nan"))
    scratch.mid_ml.fill_(float("nan"))
    ops.decode_attention(q, kc, vc, _page_table(tables, pad_to=300), torch.tensor(kv_lens, dtype=torch.int32,
                         device="cuda"), scale, page_size, num_splits, scratch=scratch, out=out)
    ref = _reference(q, kc, vc, tables, [n - 1 for n in kv_lens], [1] * len(kv_lens), page_size, scale)
    _check(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("num_splits", [1, 3, 16])
def test_decode_splits_uneven_and_empty(num_splits):
    """More splits than blocks (empty splits), odd split counts, and kv_len 0 rows -> zeros."""
    ops = _ops()
    kv_lens = [1, 2, 65, 0, 1000, 63]
    hq, hkv, d, ps = 32, 8, 128, 16
    q, kc, vc, tables = _decode_inputs([max(n, 1) for n in kv_lens], ps, hq, hkv, d, torch.bfloat16, seed=3)
    out = torch.full_like(q, float("nan"))
    ops.decode_attention(q, kc, vc, _page_table(tables), torch.tensor(kv_lens, dtype=torch.int32, device="cuda"),
                         0.1, ps, num_splits, out=out)
    live = [i for i, n in enumerate(kv_lens) if n > 0]
    ref = _reference(q[live], kc, vc, [tables[i] for i in live], [kv_lens[i] - 1 for i in live], [1] * len(live),
                     ps, 0.1)
    _check(out[live], ref)
    assert (out[kv_lens.index(0)] == 0).all()


@pytest.mark.gpu
def test_decode_cuda_graph_replay():
    """Captured once, replayed on new lengths, pages and queries written into the static inputs."""
    ops = _ops()
    hq, hkv, d, ps, bsz, splits, max_pages = 32, 8, 128, 16, 8, 8, 64
    g = _gen(9)
    num_pages = 2 * bsz * max_pages
    kc = _randn((num_pages * ps, hkv, d), torch.bfloat16, g)
    vc = _randn((num_pages * ps, hkv, d), torch.bfloat16, g)
    q_static = _randn((bsz, hq, d), torch.bfloat16, g)
    pt_static = torch.zeros((bsz, max_pages), dtype=torch.int32, device="cuda")
    lens_static = torch.ones(bsz, dtype=torch.int32, device="cuda")
    out_static = torch.empty_like(q_static)
    scratch = ops.DecodeScratch.allocate(bsz, hq, d, splits, "cuda")

    def step():
        ops.decode_attention(q_static, kc, vc, pt_static, lens_static, 1 / math.sqrt(d), ps, splits,
                             scratch=scratch, out=out_static)

    step()  # compile outside the capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    rng = random.Random(4)
    for _ in range(3):
        kv_lens = [rng.choice([1, 15, 16, 17, 200, 1000]) for _i in range(bsz)]
        perm = torch.randperm(num_pages, generator=g, device="cuda").tolist()
        tables = [perm[i * max_pages:i * max_pages + -(-n // ps)] for i, n in enumerate(kv_lens)]
        q_static.copy_(_randn((bsz, hq, d), torch.bfloat16, g))
        pt_static.copy_(_page_table(tables, pad_to=max_pages))
        lens_static.copy_(torch.tensor(kv_lens, dtype=torch.int32, device="cuda"))
        out_static.fill_(float("nan"))
        graph.replay()
        ref = _reference(q_static, kc, vc, tables, [n - 1 for n in kv_lens], [1] * bsz, ps, 1 / math.sqrt(d))
        _check(out_static, ref)


# ---------------------------------------------------------------------------------------------
# the backend against TorchSDPABackend
# ---------------------------------------------------------------------------------------------

def _batch(seqs, tables, ps, device="cuda"):
    from preble.engine.batch import ForwardBatch

    slots, pos = [], []
    for (s, n), pages in zip(seqs, tables):
        for p in range(s, s + n):
            slots.append(pages[p // ps] * ps + p % ps)
            pos.append(p)
    t = len(slots)
    return ForwardBatch(input_ids=torch.zeros(t, dtype=torch.int64, device=device),
                        positions=torch.tensor(pos, dtype=torch.int64, device=device),
                        out_slots=torch.tensor(slots, dtype=torch.int64, device=device),
                        starts=[s for s, _ in seqs], lens=[n for _, n in seqs],
                        page_tables=[list(t_) for t_ in tables],
                        logit_indices=torch.zeros(0, dtype=torch.int64, device=device), page_size=ps)


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv,d,ps", [(32, 8, 128, 16), (8, 8, 64, 1), (16, 4, 128, 128)])
def test_backend_matches_torch_sdpa(hq, hkv, d, ps):
    from preble.engine.attention import TorchSDPABackend, make_backend
    from preble.engine.attention.triton_backend import TritonBackend
    from preble.engine.kv_pool import KVPool

    layers, num_pages, dtype = 2, 4096 // ps + 600, torch.bfloat16
    g = _gen(21)
    pools = [KVPool(layers, num_pages, ps, hkv, d, dtype, "cuda") for _ in range(2)]
    for layer in range(layers):
        for t in (pools[0].k[layer], pools[0].v[layer]):
            t.copy_(_randn(t.shape, dtype, g))
        pools[1].k[layer].copy_(pools[0].k[layer])
        pools[1].v[layer].copy_(pools[0].v[layer])
    tri = make_backend("triton", pools[0])
    assert isinstance(tri, TritonBackend)
    ref = TorchSDPABackend(pools[1])

    free = torch.randperm(num_pages, generator=g, device="cuda").tolist()

    def grow(tables, seqs):
        out = []
        for (s, n), t in zip(seqs, tables):
            t = list(t)
            while len(t) * ps < s + n:
                t.append(free.pop())
            out.append(t)
        return out

    # step 1: prefill (fresh, a long one, a one-token one); step 2: chunked prefill mixed with
    # decodes; steps 3-4: decode only.
    seqs = [(0, 37), (0, 1200), (0, 1), (0, 16), (0, 300)]
    tables = grow([[] for _ in seqs], seqs)
    steps = []
    for step in range(4):
        steps.append((seqs, tables))
        ends = [s + n for s, n in seqs]
        if step == 0:
            seqs = [(e, 1) for e in ends[:-1]] + [(ends[-1], 513)]
        else:
            seqs = [(e, 1) for e in ends]
        tables = grow(tables, seqs)

    for seqs, tables in steps:
        batch = _batch(seqs, tables, ps)
        t = batch.out_slots.numel()
        plan_t, plan_r = tri.plan(batch), ref.plan(batch)
        assert plan_t.decode == batch.is_decode_only
        for layer in range(layers):
            q = _randn((t, hq, d), dtype, g)
            k = _randn((t, hkv, d), dtype, g)
            v = _randn((t, hkv, d), dtype, g)
            out_t = tri.forward(layer, q, k, v, plan_t, 1 / math.sqrt(d))
            out_r = ref.forward(layer, q, k, v, plan_r, 1 / math.sqrt(d))
            _check(out_t, out_r.double())
            assert torch.equal(pools[0].k[layer], pools[1].k[layer])
            assert torch.equal(pools[0].v[layer], pools[1].v[layer])


@pytest.mark.gpu
def test_backend_plan_layout():
    """plan(): one upload, padded page table, block map covering every query row exactly once."""
    from preble.engine.attention.triton_backend import TritonBackend
    from preble.engine.kv_pool import KVPool

    ps = 16
    pool = KVPool(1, 512, ps, 8, 128, torch.bfloat16, "cuda")
    backend = TritonBackend(pool)
    seqs = [(0, 300), (40, 1), (16, 129)]
    tables = [list(range(0, 19)), list(range(100, 103)), list(range(200, 210))]
    plan = backend.plan(_batch(seqs, tables, ps))
    assert not plan.decode
    assert plan.page_table.shape[1] % 16 == 0
    assert plan.page_table[0, :19].tolist() == tables[0] and plan.page_table[2, :10].tolist() == tables[2]
    assert plan.cu_q.tolist() == [0, 300, 301, 430]
    assert plan.kv_lens.tolist() == [300, 41, 145]
    bm = plan.extend_params.block_m
    covered = sorted((s, m) for s, m in zip(plan.block_seq.tolist(), plan.block_m_start.tolist()))
    want = sorted((i, m) for i, (_, n) in enumerate(seqs) for m in range(0, n, bm))
    assert covered == want
