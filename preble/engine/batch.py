"""What one forward pass computes, laid out for the model and the attention backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    """A step's tokens, packed: sequence i contributes `lens[i]` new tokens whose positions
    start at `starts[i]` (the tokens before are already in the KV pool)."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    out_slots: torch.Tensor  # [T] int64: pool slot each new token's K/V goes to
    starts: list[int]
    lens: list[int]
    page_tables: list[list[int]]  # pages of each sequence, covering positions [0, start + len)
    logit_indices: torch.Tensor  # [B_sample] rows of the packed hidden states to sample from
    page_size: int

    @property
    def is_decode_only(self) -> bool:
        return all(n == 1 for n in self.lens)
