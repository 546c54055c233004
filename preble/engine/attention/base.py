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
    per layer. Queries attend causally among the new tokens and fully to the cached prefix.
    """

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool

    @abstractmethod
    def plan(self, batch: ForwardBatch) -> Any: ...

    @abstractmethod
    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                plan: Any, scale: float) -> torch.Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] for the new tokens; returns [T, Hq, D]."""
