"""Reference attention for CPU: gather each sequence's K/V from the pool and call torch SDPA."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..batch import ForwardBatch
from .base import AttentionBackend


@dataclass
class _SeqPlan:
    rows: slice  # the sequence's rows in the packed batch
    kv_slots: torch.Tensor  # pool slots of positions [0, start + len)
    mask: torch.Tensor | None  # [len, start + len] bool, None when a single query sees all


@dataclass
class _Plan:
    out_slots: torch.Tensor
    seqs: list[_SeqPlan]


class TorchSDPABackend(AttentionBackend):
    def plan(self, batch: ForwardBatch) -> _Plan:
        device = batch.input_ids.device
        ps = batch.page_size
        plans, row = [], 0
        for start, n, pages in zip(batch.starts, batch.lens, batch.page_tables):
            end = start + n
            page_ids = torch.tensor(pages, dtype=torch.int64, device=device)
            slots = (page_ids[:, None] * ps + torch.arange(ps, device=device)).flatten()[:end]
            mask = None
            if n > 1:
                q_pos = torch.arange(start, end, device=device)[:, None]
                mask = torch.arange(end, device=device)[None, :] <= q_pos
            plans.append(_SeqPlan(slice(row, row + n), slots, mask))
            row += n
        return _Plan(batch.out_slots, plans)

    def store(self, layer, k, v, slots):
        self.pool.write(layer, slots, k, v)

    def attend(self, layer, q, plan, scale, out=None):
        out = torch.empty_like(q) if out is None else out
        k_pool, v_pool = self.pool.k[layer], self.pool.v[layer]
        for p in plan.seqs:
            qs = q[p.rows].transpose(0, 1)  # [Hq, n, D]
            ks = k_pool[p.kv_slots].transpose(0, 1)  # [Hkv, end, D]
            vs = v_pool[p.kv_slots].transpose(0, 1)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=p.mask, scale=scale,
                                               enable_gqa=True)
            out[p.rows] = o.transpose(0, 1)
        return out
