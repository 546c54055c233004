"""Attention on CUDA through the Triton kernels of `triton_ops` (imported only on CUDA machines).

`plan` turns the step's host-side lists into device tensors with a single host->device copy
(one pinned int32 buffer, sliced into views); `forward` stores the layer's new K/V into the pool
and runs the decode kernel when every sequence has exactly one new token, the extend kernel
otherwise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..batch import ForwardBatch
from ..kv_pool import KVPool
from . import triton_ops as ops
from .base import AttentionBackend

INTERPRETER_NUM_SMS = 132  # the SMs the split policy assumes under Triton's CPU interpreter (an H100's)


@dataclass(frozen=True)
class TritonAttentionConfig:
    # Extend (prefill) kernel. None: the per-head-dim default of `triton_ops.default_extend_params`
    # (D=128: 128 query rows x 64-key steps, 4 warps, 3 stages; D=64: the same with 8 warps).
    extend_params: ops.ExtendParams | None = None
    # When a step has at most this many query blocks of `extend_params` (e.g. a short chunk on a long cached
    # prefix), use `extend_small_params` (None: 64 rows x 128-key steps) to put more programs on
    # the SMs.
    extend_small_max_blocks: int = 3
    extend_small_params: ops.ExtendParams | None = None
    # Decode kernel. None: `triton_ops.default_decode_params` (64-key steps, 4 warps, 3 stages).
    decode_params: ops.DecodeParams | None = None
    # Flash-decoding splits per sequence. 0: chosen from the batch size alone (CUDA-graph safe)
    # so that batch * Hkv * splits >= decode_split_waves * SMs, rounded up to a power of two and
    # capped at decode_max_splits (measured on H100: 1 wave is enough; more splits than that only
    # add merge work).
    decode_num_splits: int = 0
    decode_max_splits: int = 32
    decode_split_waves: float = 1.0
    # A prefill step whose sequences have no cached prefix and equal lengths (one long prompt, most
    # often) runs through torch's SDPA (FlashAttention) on the new K/V, which measured 1.5x the
    # extend kernel's throughput on such steps; the extend kernel takes everything else.
    dense_fresh_prefill: bool = True


@dataclass
class TritonPlan:
    decode: bool
    page_size: int
    out_slots: torch.Tensor  # [T] pool slot of each new token
    page_table: torch.Tensor  # int32 [B, max_pages], rows padded with page 0
    kv_lens: torch.Tensor  # int32 [B]: start + len
    starts: torch.Tensor  # int32 [B]
    lens: torch.Tensor  # int32 [B]
    cu_q: torch.Tensor  # int32 [B + 1]
    max_len_q: int
    # extend only: query blocks (heaviest first) and the kernel parameters they were cut for
    block_seq: torch.Tensor | None = None
    block_m_start: torch.Tensor | None = None
    extend_params: ops.ExtendParams | None = None
    # decode only
    num_splits: int = 1
    # fresh prefill (no cached prefix, equal lengths): sequences and their common length
    dense_shape: tuple[int, int] | None = None


def _align(n: int, a: int = 4) -> int:
    """Round up to a multiple of `a` int32s (16 bytes), so every view keeps 16-byte alignment
    (Triton specialises kernels on pointer alignment; stable alignment means no recompiles)."""
    return -(-n // a) * a


class _Staging:
    """Pinned host buffers for the per-step upload, used round-robin. Before a buffer is refilled
    we wait on the event recorded after its last copy, so a non-blocking copy still in flight is
    never overwritten (normally it finished long ago and the wait is free)."""

    def __init__(self, device: torch.device, depth: int = 2) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self.bufs: list[torch.Tensor | None] = [None] * depth
        self.events = [torch.cuda.Event() if self.pinned else None for _ in range(depth)]
        self.used = [False] * depth
        self.next = 0

    def host(self, n: int) -> tuple[int, np.ndarray]:
        i = self.next
        self.next = (i + 1) % len(self.bufs)
        if self.used[i]:
            self.events[i].synchronize()
        buf = self.bufs[i]
        if buf is None or buf.numel() < n:
            size = max(n, 2 * (buf.numel() if buf is not None else 0), 4096)
            buf = torch.empty(size, dtype=torch.int32, pin_memory=self.pinned)
            self.bufs[i] = buf
        return i, buf.numpy()[:n]

    def upload(self, i: int, n: int) -> torch.Tensor:
        src = self.bufs[i][:n]
        if not self.pinned:
            return src.clone().to(self.device)
        dev = src.to(self.device, non_blocking=True)
        self.events[i].record()
        self.used[i] = True
        return dev


class TritonBackend(AttentionBackend):
    def __init__(self, pool: KVPool, config: TritonAttentionConfig | None = None) -> None:
        super().__init__(pool)
        self.config = config or TritonAttentionConfig()
        self.device = pool.k[0].device
        self.num_kv_heads = pool.k[0].shape[1]
        self.head_dim = pool.k[0].shape[2]
        self.dtype = pool.k[0].dtype
        ops._check_head_dim(self.head_dim)
        if self.device.type == "cuda":
            self.num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        else:  # CPU only under TRITON_INTERPRET=1 (kernel debugging)
            self.num_sms = INTERPRETER_NUM_SMS
        self._staging = _Staging(self.device)
        self._scratch: ops.DecodeScratch | None = None

    # -- decode split policy and scratch ------------------------------------------------------

    def num_splits(self, batch_size: int) -> int:
        c = self.config
        if c.decode_num_splits > 0:
            return c.decode_num_splits
        return ops.pick_num_splits(batch_size, self.num_kv_heads, self.num_sms, c.decode_max_splits,
                                   c.decode_split_waves)

    def reserve_decode_scratch(self, max_batch: int, num_q_heads: int) -> ops.DecodeScratch:
        """Allocate the decode scratch for every batch size up to `max_batch` now (call before
        capturing CUDA graphs so that captured launches see one static buffer)."""
        rows = max(b * self.num_splits(b) for b in range(1, max_batch + 1))
        self._ensure_scratch(rows, num_q_heads)
        return self._scratch

    def _ensure_scratch(self, rows: int, num_q_heads: int) -> ops.DecodeScratch:
        s = self._scratch
        if s is None or s.num_q_heads != num_q_heads or s.capacity < rows:
            cap = rows if s is None or s.num_q_heads != num_q_heads else max(rows, 2 * s.capacity)
            self._scratch = ops.DecodeScratch.allocate(cap, num_q_heads, self.head_dim, 1, self.device)
        return self._scratch

    # -- per step -----------------------------------------------------------------------------

    def plan(self, batch: ForwardBatch) -> TritonPlan:
        ps = batch.page_size
        assert ps == self.pool.page_size
        starts = np.asarray(batch.starts, dtype=np.int64)
        lens = np.asarray(batch.lens, dtype=np.int64)
        B = len(lens)
        decode = batch.is_decode_only
        npages = np.fromiter((len(t) for t in batch.page_tables), dtype=np.int64, count=B)
        max_pages = _align(max(int(npages.max()) if B else 1, 1), 16)

        if decode:
            extend_params, nb, blocks = None, 0, None
        else:
            c = self.config
            extend_params = c.extend_params or ops.default_extend_params(self.head_dim, False, self.dtype)
            rows = extend_params.block_m
            if int(((lens + rows - 1) // rows).sum()) <= c.extend_small_max_blocks:
                extend_params = c.extend_small_params or ops.default_extend_params(self.head_dim, True, self.dtype)
            blocks = ops.build_extend_block_map(starts, lens, extend_params.block_m)
            nb = len(blocks[0])

        # One int32 buffer: starts | lens | kv_lens | cu_q | block_seq | block_m | page_table
        sizes = [B, B, B, B + 1, nb, nb, B * max_pages]
        offs = list(itertools.accumulate([_align(s) for s in sizes], initial=0))
        slot, host = self._staging.host(offs[-1])
        seg = [host[offs[i]:offs[i] + sizes[i]] for i in range(len(sizes))]
        seg[0][:] = starts
        seg[1][:] = lens
        seg[2][:] = starts + lens
        seg[3][0] = 0
        np.cumsum(lens, out=seg[3][1:])
        if nb:
            seg[4][:] = blocks[0]
            seg[5][:] = blocks[1]
        pt = seg[6].reshape(B, max_pages)
        pt.fill(0)
        if B:
            flat = np.fromiter(itertools.chain.from_iterable(batch.page_tables), dtype=np.int32,
                               count=int(npages.sum()))
            pt[np.arange(max_pages)[None, :] < npages[:, None]] = flat
        dev = self._staging.upload(slot, offs[-1])
        view = [dev[offs[i]:offs[i] + sizes[i]] for i in range(len(sizes))]

        dense = (not decode and self.config.dense_fresh_prefill and B > 0 and not starts.any()
                 and bool((lens == lens[0]).all()))
        return TritonPlan(
            dense_shape=(B, int(lens[0])) if dense else None,
            decode=decode, page_size=ps, out_slots=batch.out_slots,
            page_table=view[6].view(B, max_pages), kv_lens=view[2], starts=view[0], lens=view[1],
            cu_q=view[3], max_len_q=int(lens.max()) if B else 0,
            block_seq=view[4] if nb else None, block_m_start=view[5] if nb else None,
            extend_params=extend_params, num_splits=self.num_splits(B) if decode else 1)

    def forward(self, layer, q, k, v, plan: TritonPlan, scale):
        self.store(layer, k, v, plan.out_slots)
        if plan.dense_shape is not None:
            return self._dense_prefill(q, k, v, plan.dense_shape, scale)
        return self.attend(layer, q, plan, scale)

    def store(self, layer, k, v, slots):
        ops.store_kv(self.pool.k[layer], self.pool.v[layer], slots, k, v)

    def attend(self, layer, q, plan: TritonPlan, scale, out=None):
        """Decode or extend kernel; a fresh prefill's dense path needs the new K/V at hand, so
        only `forward` takes it (attending apart, the extend kernel runs it)."""
        k_cache, v_cache = self.pool.k[layer], self.pool.v[layer]
        if plan.decode:
            B, Hq, _ = q.shape
            scratch = self._ensure_scratch(B * plan.num_splits, Hq) if plan.num_splits > 1 else None
            return ops.decode_attention(q, k_cache, v_cache, plan.page_table, plan.kv_lens, scale,
                                        plan.page_size, plan.num_splits, scratch=scratch,
                                        params=self.config.decode_params
                                        or ops.default_decode_params(self.head_dim, self.dtype), out=out)
        return ops.extend_attention(q, k_cache, v_cache, plan.page_table, plan.starts, plan.lens,
                                    plan.cu_q, plan.max_len_q, scale, plan.page_size,
                                    block_seq=plan.block_seq, block_m_start=plan.block_m_start,
                                    params=plan.extend_params, out=out)

    @staticmethod
    def _dense_prefill(q, k, v, shape: tuple[int, int], scale: float) -> torch.Tensor:
        """Causal attention of equal-length fresh sequences straight from the new K/V."""
        b, n = shape

        def heads_first(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, n, x.shape[1], x.shape[2]).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), is_causal=True,
                                             scale=scale, enable_gqa=True)
        return out.transpose(1, 2).reshape(q.shape)


__all__ = ["TritonBackend", "TritonAttentionConfig", "TritonPlan"]
