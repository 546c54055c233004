"""The attention backend interface the model calls once per layer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from ..batch import ForwardBatch
from ..kv_pool import KVPool


class AttentionBackend(ABC):
    """Writes a step's new K/V into the pool and attends each query to its sequence's K/V.

    `plan` runs once per forward pass (index arithmetic shared by all layers); `forward` once
    per layer: `store` then `attend`, which piecewise CUDA graphs call apart (the store inside a
    captured piece, the attention between pieces). Queries attend causally among the new tokens
    and fully to the cached prefix.
    """

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool

    @abstractmethod
    def plan(self, batch: ForwardBatch) -> Any: ...

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                plan: Any, scale: float) -> torch.Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] for the new tokens; returns [T, Hq, D]."""
        self.store(layer, k, v, plan.out_slots)
        return self.attend(layer, q, plan, scale)

    @abstractmethod
    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """Write the new tokens' K/V to their pool slots."""

    @abstractmethod
    def attend(self, layer: int, q: torch.Tensor, plan: Any, scale: float,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of q [T, Hq, D] over the pool (the new K/V stored already), written to `out`
        when given."""
