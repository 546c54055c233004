"""Triton kernels for attention over the paged KV pool, and thin Python wrappers.

Only imported on CUDA machines (the "triton" backend imports it lazily); nothing else in the
package imports this module, so a CPU install never needs Triton.

Layout shared by every kernel (see `kv_pool.py`):
  k_cache, v_cache: [num_slots, Hkv, D] per layer, slot = page * page_size + offset;
  page_table: int32 [B, max_pages] (padded rows; only the first ceil(kv_len / page_size)
  entries of row b are read); q / new k / new v: packed over sequences, [T, H, D], last dim
  contiguous (the token and head strides may be anything, e.g. views of a fused qkv output).

Kernels:
  store_kv          one launch writes the new K and V rows into the pool.
  extend_attention  varlen prefill/extend: each new token attends causally to the new tokens of
                    its sequence and fully to its cached prefix; every key is read from the pool
                    through the page table (the new K/V must already be stored).
  decode_attention  flash-decoding: one query per sequence, each sequence's keys split over
                    `num_splits` programs (stage 1), partial results merged by stage 2. One
                    program serves all query heads of one KV head (GQA), so each K/V row is read
                    once. The grid depends only on (batch, kv heads, num_splits): CUDA-graph safe.

Softmax is computed online in fp32 in the base-2 domain (scale * log2(e) folded into exp2's argument).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)


def _check_head_dim(d: int) -> None:
    assert d >= 16 and d <= 256 and (d & (d - 1)) == 0, f"head_dim must be a power of two in [16, 256], got {d}"


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    assert k_cache.dim() == 3 and k_cache.shape == v_cache.shape, "caches must be [num_slots, Hkv, D]"
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "cache head_dim must be contiguous"


def _dot_precision(dtype: torch.dtype) -> str:
    """float32 pools get exact fp32 products ("ieee"; tl.dot would otherwise use TF32, whose
    10-bit mantissa can flip greedy tokens against a CPU fp32 run); 16-bit inputs ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_attention_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            page_table: torch.Tensor) -> int:
    """Shapes and dtypes both attention kernels rely on; returns the number of KV heads."""
    Hq, D = q.shape[1], q.shape[2]
    _check_head_dim(D)
    _check_cache(k_cache, v_cache)
    Hkv = k_cache.shape[1]
    assert k_cache.shape[2] == D and Hq % Hkv == 0, "GQA needs Hq to be a multiple of Hkv"
    assert q.dtype == k_cache.dtype, "q must have the KV cache's dtype"
    assert page_table.dtype == torch.int32 and page_table.stride(-1) == 1
    return Hkv


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# --------------------------------------------------------------------------------------------
# store_kv
# --------------------------------------------------------------------------------------------

@triton.jit
def _store_kv_kernel(K_cache, V_cache, Slots, K, V,
                     stride_kt, stride_kh, stride_vt, stride_vh, stride_cs, stride_ch,
                     NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(Slots + t).to(tl.int64)
    if slot >= 0:  # a negative slot means "skip" (handy for padded CUDA-graph batches)
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, HEAD_DIM)
        mask = offs_h[:, None] < NUM_HEADS
        t64 = t.to(tl.int64)
        src_k = K + t64 * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :]
        src_v = V + t64 * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :]
        dst = slot * stride_cs + offs_h[:, None] * stride_ch + offs_d[None, :]
        kk = tl.load(src_k, mask=mask)
        vv = tl.load(src_v, mask=mask)
        tl.store(K_cache + dst, kk.to(K_cache.dtype.element_ty), mask=mask)
        tl.store(V_cache + dst, vv.to(V_cache.dtype.element_ty), mask=mask)


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor) -> None:
    """k_cache[slots[t]] = k[t]; v_cache[slots[t]] = v[t], in one launch (slots < 0 are skipped).

    k, v: [T, Hkv, D] (any token/head strides, contiguous last dim); slots: [T] int32/int64.
    Fusing K and V halves the launches of two index_put_ calls and reads `slots` once; the copy
    itself is a plain row scatter either way."""
    _check_cache(k_cache, v_cache)
    T = slots.shape[0]
    if T == 0:
        return
    assert k.shape == v.shape and k.shape[0] == T and tuple(k.shape[1:]) == tuple(k_cache.shape[1:])
    k, v = _last_dim_contiguous(k), _last_dim_contiguous(v)
    assert k_cache.stride() == v_cache.stride()
    H, D = k_cache.shape[1], k_cache.shape[2]
    _check_head_dim(D)
    _store_kv_kernel[(T,)](
        k_cache, v_cache, slots, k, v,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(0), k_cache.stride(1),
        NUM_HEADS=H, HEAD_DIM=D, BLOCK_H=triton.next_power_of_2(H), num_warps=4)


# --------------------------------------------------------------------------------------------
# shared: pool slots of a block of key positions
# --------------------------------------------------------------------------------------------

@triton.jit
def _key_slots(pt_row, n0, offs_n, kmask, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
               MASKED: tl.constexpr):
    """int64 pool slots of key positions n0 + offs_n, looked up through one page-table row."""
    kpos = n0 + offs_n
    if PAGE_SIZE % BLOCK_N == 0:
        # The block lies inside one page (n0 is a multiple of BLOCK_N): one page-id load.
        page = tl.load(pt_row + n0 // PAGE_SIZE).to(tl.int64)
        slots = page * PAGE_SIZE + (n0 % PAGE_SIZE) + offs_n
    else:
        if MASKED:
            page = tl.load(pt_row + kpos // PAGE_SIZE, mask=kmask, other=0).to(tl.int64)
        else:
            page = tl.load(pt_row + kpos // PAGE_SIZE).to(tl.int64)
        slots = page * PAGE_SIZE + kpos % PAGE_SIZE
    return slots


# --------------------------------------------------------------------------------------------
# extend (prefill with cached prefix), varlen
# --------------------------------------------------------------------------------------------

@triton.jit
def _extend_kernel(Q, K, V, O, PageTable, Starts, Lens, CuQ, BlockSeq, BlockM,
                   qk_scale,
                   stride_qt, stride_qh, stride_ot, stride_oh,
                   stride_ks, stride_kh, stride_vs, stride_vh, stride_pt,
                   NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                   PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   USE_BLOCK_MAP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    h = pid % NUM_HEADS
    if USE_BLOCK_MAP:
        # Host-built list of (sequence, first query row) blocks, heaviest first.
        blk = pid // NUM_HEADS
        seq = tl.load(BlockSeq + blk)
        m0 = tl.load(BlockM + blk)
    else:
        # (q blocks x heads, sequences) grid; q blocks in reverse so the heavy causal ones start first.
        num_m_blocks = tl.num_programs(0) // NUM_HEADS
        m0 = (num_m_blocks - 1 - pid // NUM_HEADS) * BLOCK_M
        seq = tl.program_id(1)
    qlen = tl.load(Lens + seq)
    if m0 < qlen:
        start = tl.load(Starts + seq)
        q_first = tl.load(CuQ + seq)
        kvh = h // GROUP

        offs_m = m0 + tl.arange(0, BLOCK_M)  # query index within the sequence's new tokens
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_mask = offs_m < qlen
        q_rows = (q_first + offs_m).to(tl.int64)
        q = tl.load(Q + q_rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                    mask=row_mask[:, None], other=0.0)
        q_pos = start + offs_m  # absolute positions of the queries

        # Keys [0, full_end) are visible to every row of the block (they precede its first
        # query) and fill whole blocks: no masks. Keys [full_end, kv_end) need the causal mask.
        kv_end = start + tl.minimum(m0 + BLOCK_M, qlen)
        full_end = ((start + m0) // BLOCK_N) * BLOCK_N

        pt_row = PageTable + seq.to(tl.int64) * stride_pt
        k_base = K + kvh * stride_kh
        v_base = V + kvh * stride_vh

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

        # The first block processed is always key block 0, where key 0 is visible to every row,
        # so m_i is finite after it and no row ever computes exp2(-inf - -inf).
        for n0 in tl.range(0, full_end, BLOCK_N):
            slots = _key_slots(pt_row, n0, offs_n, offs_n < BLOCK_N, PAGE_SIZE, BLOCK_N, False)
            k = tl.load(k_base + slots[:, None] * stride_ks + offs_d[None, :])
            # raw scores; the scale is folded into the exp2 argument
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s * qk_scale - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + slots[:, None] * stride_vs + offs_d[None, :])
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
            m_i = m_new

        for n0 in tl.range(full_end, kv_end, BLOCK_N):
            kpos = n0 + offs_n
            kmask = kpos < kv_end
            slots = _key_slots(pt_row, n0, offs_n, kmask, PAGE_SIZE, BLOCK_N, True)
            k = tl.load(k_base + slots[:, None] * stride_ks + offs_d[None, :],
                        mask=kmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            visible = (kpos[None, :] <= q_pos[:, None]) & kmask[None, :]
            s = tl.where(visible, s, float("-inf"))  # qk_scale > 0 keeps -inf at -inf
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s * qk_scale - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + slots[:, None] * stride_vs + offs_d[None, :],
                        mask=kmask[:, None], other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
            m_i = m_new

        out = acc / l_i[:, None]
        tl.store(O + q_rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=row_mask[:, None])


@dataclass(frozen=True)
class ExtendParams:
    block_m: int = 128  # query rows per program
    block_n: int = 64  # keys per inner-loop step
    num_warps: int = 8
    num_stages: int = 3  # software-pipelining depth of the K/V loads


def default_extend_params(head_dim: int, small: bool = False,
                          dtype: torch.dtype = torch.bfloat16) -> ExtendParams:
    """Defaults measured on an H100 (Hq=32, Hkv=8, bf16, page 16; see scripts/gpu_attention_bench.py).

    `small`: for launches with few query blocks (e.g. one short chunk on a long cached prefix),
    64-row programs over 128-key steps put twice as many programs on the SMs."""
    if head_dim > 128 or dtype == torch.float32:  # untuned: sized to fit shared memory / registers
        return ExtendParams(block_m=64, block_n=32, num_warps=4, num_stages=2)
    if small:
        return ExtendParams(block_m=64, block_n=128 if head_dim > 64 else 64, num_warps=4, num_stages=3)
    if head_dim <= 64:
        return ExtendParams(block_m=128, block_n=64, num_warps=8, num_stages=3)
    return ExtendParams(block_m=128, block_n=64, num_warps=4, num_stages=3)


def build_extend_block_map(starts, lens, block_m: int):
    """Host-side (numpy) list of query blocks for `extend_attention(block_seq=, block_m_start=)`.

    Returns (block_seq, block_m_start) int32 numpy arrays, one entry per BLOCK_M rows of each
    sequence's new tokens, ordered by decreasing work (keys attended) so the longest programs
    start first and the tail of the launch is short."""
    import numpy as np

    starts = np.asarray(starts, dtype=np.int64)
    lens = np.asarray(lens, dtype=np.int64)
    nb = (lens + block_m - 1) // block_m
    total = int(nb.sum())
    seq = np.repeat(np.arange(len(lens), dtype=np.int64), nb)
    first = np.repeat(np.cumsum(nb) - nb, nb)
    m0 = (np.arange(total, dtype=np.int64) - first) * block_m
    work = starts[seq] + np.minimum(m0 + block_m, lens[seq])
    order = np.argsort(-work, kind="stable")
    return seq[order].astype(np.int32), m0[order].astype(np.int32)


def extend_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     page_table: torch.Tensor, starts: torch.Tensor, lens: torch.Tensor,
                     cu_q: torch.Tensor, max_len_q: int, scale: float, page_size: int, *,
                     block_seq: torch.Tensor | None = None, block_m_start: torch.Tensor | None = None,
                     params: ExtendParams | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal varlen attention of packed new tokens over their sequences' pooled K/V.

    q: [T, Hq, D]; page_table: int32 [B, max_pages]; starts/lens: int32 [B] (tokens already cached /
    new tokens of each sequence); cu_q: int32 [B+1] (row offsets of each sequence in q);
    max_len_q: max(lens). Row cu_q[b] + i attends to key positions [0, starts[b] + i].

    Grid: with `block_seq`/`block_m_start` (device int32 [NB], from `build_extend_block_map` with
    `params.block_m`) it is exactly NB * Hq programs; without, (ceil(max_len_q / block_m) * Hq, B)
    and programs past their sequence's end exit at once. Returns `out` ([T, Hq, D], allocated
    when None)."""
    T, Hq, D = q.shape
    Hkv = _check_attention_inputs(q, k_cache, v_cache, page_table)
    q = _last_dim_contiguous(q)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    assert out.shape == q.shape and out.stride(-1) == 1
    B = lens.shape[0]
    if T == 0 or B == 0:
        return out
    p = params or default_extend_params(D, dtype=q.dtype)
    if block_seq is not None:
        assert block_m_start is not None
        grid = (block_seq.shape[0] * Hq,)
        use_map = True
    else:
        grid = (triton.cdiv(max_len_q, p.block_m) * Hq, B)
        block_seq = block_m_start = lens  # unused
        use_map = False
    if grid[0] == 0:
        return out
    _extend_kernel[grid](
        q, k_cache, v_cache, out, page_table, starts, lens, cu_q, block_seq, block_m_start,
        scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), page_table.stride(0),
        NUM_HEADS=Hq, GROUP=Hq // Hkv, HEAD_DIM=D, PAGE_SIZE=page_size,
        BLOCK_M=p.block_m, BLOCK_N=p.block_n, USE_BLOCK_MAP=use_map, DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=p.num_warps, num_stages=p.num_stages)
    return out


# --------------------------------------------------------------------------------------------
# decode (flash-decoding, GQA-grouped)
# --------------------------------------------------------------------------------------------

@triton.jit
def _decode_stage1_kernel(Q, K, V, PageTable, KvLens, MidO, MidML, O,
                          qk_scale,
                          stride_qb, stride_qh,
                          stride_ks, stride_kh, stride_vs, stride_vh, stride_pt,
                          stride_mob, stride_moh, stride_mos,
                          stride_mlb, stride_mlh, stride_mls,
                          stride_ob, stride_oh,
                          GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                          PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
                          DOT_PRECISION: tl.constexpr):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    kv_len = tl.load(KvLens + b)
    # Each split covers a BLOCK_N-aligned range; trailing splits of short sequences are empty.
    split_len = tl.cdiv(tl.cdiv(kv_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * split_len
    hi = tl.minimum(lo + split_len, kv_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    gmask = offs_g < GROUP
    heads = kvh * GROUP + offs_g
    b64 = b.to(tl.int64)
    # The group's query heads, padded with zero rows to GROUP_PAD (>= 16, tl.dot's minimum M).
    q = tl.load(Q + b64 * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=gmask[:, None], other=0.0)

    pt_row = PageTable + b64 * stride_pt
    k_base = K + kvh * stride_kh
    v_base = V + kvh * stride_vh
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    # Non-empty range: its first block has at least one valid key, so m_i turns finite at once.
    for n0 in tl.range(lo, hi, BLOCK_N):
        kpos = n0 + offs_n
        kmask = kpos < hi
        slots = _key_slots(pt_row, n0, offs_n, kmask, PAGE_SIZE, BLOCK_N, True)
        k = tl.load(k_base + slots[:, None] * stride_ks + offs_d[None, :], mask=kmask[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        s = tl.where(kmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + slots[:, None] * stride_vs + offs_d[None, :], mask=kmask[:, None], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    if NUM_SPLITS == 1:
        # No merge needed: write the output directly (kv_len == 0 rows come out as zeros).
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        tl.store(O + b64 * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=gmask[:, None])
    else:
        # Every (b, head, split) entry is written, empty splits as (m=-inf, l=0, acc=0).
        tl.store(MidO + b64 * stride_mob + heads[:, None] * stride_moh + split * stride_mos + offs_d[None, :],
                 acc, mask=gmask[:, None])
        ml = MidML + b64 * stride_mlb + heads * stride_mlh + split * stride_mls
        tl.store(ml, m_i, mask=gmask)
        tl.store(ml + 1, l_i, mask=gmask)


@triton.jit
def _decode_stage2_kernel(MidO, MidML, O,
                          stride_mob, stride_moh, stride_mos,
                          stride_mlb, stride_mlh, stride_mls,
                          stride_ob, stride_oh,
                          NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    smask = offs_s < NUM_SPLITS
    ml = MidML + b * stride_mlb + h * stride_mlh + offs_s * stride_mls
    m = tl.load(ml, mask=smask, other=float("-inf"))
    l = tl.load(ml + 1, mask=smask, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # all splits empty (kv_len == 0)
    w = tl.exp2(m - m_max)
    acc = tl.load(MidO + b * stride_mob + h * stride_moh + offs_s[:, None] * stride_mos + offs_d[None, :],
                  mask=smask[:, None], other=0.0)
    num = tl.sum(acc * w[:, None], 0)
    den = tl.sum(l * w, 0)
    den = tl.where(den == 0.0, 1.0, den)
    tl.store(O + b * stride_ob + h * stride_oh + offs_d, (num / den).to(O.dtype.element_ty))


@dataclass(frozen=True)
class DecodeParams:
    block_n: int = 64  # keys per inner-loop step (also the split alignment)
    num_warps: int = 4
    num_stages: int = 3


@dataclass
class DecodeScratch:
    """fp32 partial results of decode stage 1 (flat buffers, viewed per call).

    Holds `capacity` (sequence, split) rows of Hq heads: any call with batch * num_splits <=
    capacity and the same Hq and D can use it, so one buffer allocated up front (e.g. before
    CUDA-graph capture) serves every batch size. Per call the views are mid_o [B, Hq, S, D]
    (unnormalised outputs) and mid_ml [B, Hq, S, 2] (running max in the base-2 log domain, sum)."""

    mid_o: torch.Tensor
    mid_ml: torch.Tensor
    num_q_heads: int
    head_dim: int
    capacity: int

    @classmethod
    def allocate(cls, max_batch: int, num_q_heads: int, head_dim: int, num_splits: int,
                 device: torch.device | str) -> DecodeScratch:
        cap = max(1, max_batch * num_splits)
        return cls(torch.empty(cap * num_q_heads * head_dim, dtype=torch.float32, device=device),
                   torch.empty(cap * num_q_heads * 2, dtype=torch.float32, device=device),
                   num_q_heads, head_dim, cap)

    def views(self, batch: int, num_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert batch * num_splits <= self.capacity, "decode scratch too small for this batch"
        n = batch * self.num_q_heads * num_splits
        return (self.mid_o[: n * self.head_dim].view(batch, self.num_q_heads, num_splits, self.head_dim),
                self.mid_ml[: n * 2].view(batch, self.num_q_heads, num_splits, 2))


def default_decode_params(head_dim: int, dtype: torch.dtype = torch.bfloat16) -> DecodeParams:
    """Measured on an H100: 64-key steps, 4 warps, 3 stages reach ~95% of copy bandwidth at
    large batch (32-key steps or 2 stages are within a few percent)."""
    if head_dim > 128 or dtype == torch.float32:  # untuned
        return DecodeParams(block_n=32, num_warps=4, num_stages=2)
    return DecodeParams(block_n=64, num_warps=4, num_stages=3)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     page_table: torch.Tensor, kv_lens: torch.Tensor, scale: float, page_size: int,
                     num_splits: int, *, scratch: DecodeScratch | None = None,
                     params: DecodeParams | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """One query per sequence over its pooled K/V (which already include the new token).

    q: [B, Hq, D]; page_table: int32 [B, max_pages]; kv_lens: int32 [B] (keys of each sequence;
    0 is allowed and yields zeros). Launches stage 1 on a (B, Hkv, num_splits) grid and, when
    num_splits > 1, stage 2 on (B, Hq). Nothing on the host depends on tensor contents, so the
    call can be captured in a CUDA graph provided `scratch` (when num_splits > 1) and `out` are
    preallocated static buffers; without them the wrapper allocates both (from torch's caching
    allocator, or the graph's private pool during capture)."""
    B, Hq, D = q.shape
    Hkv = _check_attention_inputs(q, k_cache, v_cache, page_table)
    assert num_splits >= 1
    q = _last_dim_contiguous(q)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    assert out.shape == q.shape and out.stride(-1) == 1
    if B == 0:
        return out
    p = params or default_decode_params(D, q.dtype)
    group = Hq // Hkv
    if num_splits > 1:
        if scratch is None:
            scratch = DecodeScratch.allocate(B, Hq, D, num_splits, q.device)
        assert scratch.num_q_heads == Hq and scratch.head_dim == D, "decode scratch has the wrong shape"
        mid_o, mid_ml = scratch.views(B, num_splits)
    else:  # stage 1 writes `out` directly; the scratch arguments are never touched
        mid_o = mid_ml = out
    _decode_stage1_kernel[(B, Hkv, num_splits)](
        q, k_cache, v_cache, page_table, kv_lens, mid_o, mid_ml, out,
        scale * LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), page_table.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_ml.stride(0), mid_ml.stride(1), mid_ml.stride(2),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=D,
        PAGE_SIZE=page_size, BLOCK_N=p.block_n, NUM_SPLITS=num_splits, DOT_PRECISION=_dot_precision(q.dtype),
        num_warps=p.num_warps, num_stages=p.num_stages)
    if num_splits > 1:
        _decode_stage2_kernel[(B, Hq)](
            mid_o, mid_ml, out,
            mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
            mid_ml.stride(0), mid_ml.stride(1), mid_ml.stride(2),
            out.stride(0), out.stride(1),
            NUM_SPLITS=num_splits, SPLITS_PAD=triton.next_power_of_2(num_splits), HEAD_DIM=D,
            num_warps=4 if D >= 128 else 2)
    return out


def pick_num_splits(batch: int, num_kv_heads: int, num_sms: int, max_splits: int = 32,
                    waves: float = 1.0) -> int:
    """Splits so that batch * Hkv * splits >= waves * num_sms programs, rounded up to a power of
    two (so few kernel variants get compiled: NUM_SPLITS is a compile-time constant) and capped
    at max_splits.

    Depends only on the batch size and the model shape, never on sequence lengths, so one value
    per captured batch size is CUDA-graph safe."""
    progs = max(1, batch * num_kv_heads)
    want = max(1, math.ceil(waves * num_sms / progs))
    return max(1, min(max_splits, triton.next_power_of_2(want)))
