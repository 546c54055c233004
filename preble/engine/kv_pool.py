"""The KV pool: one K and one V tensor per layer, indexed by token slot.

Slot `page * page_size + offset` holds the K/V of one token. Pages are handed out by the
scheduling core's `PageAllocator`; this module only owns the memory behind them.
"""

from __future__ import annotations

import torch


def page_bytes(num_layers: int, page_size: int, num_kv_heads: int, head_dim: int,
               dtype: torch.dtype) -> int:
    """Bytes one page takes over all layers, K and V."""
    return 2 * num_layers * page_size * num_kv_heads * head_dim * dtype.itemsize


class KVPool:
    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self.num_pages = num_pages
        self.page_size = page_size
        self.num_slots = num_pages * page_size
        shape = (self.num_slots, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer][slots] = k
        self.v[layer][slots] = v
