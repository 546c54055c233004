"""Tensor parallelism: how a replica's model is split over its ranks, and the collectives.

Megatron's layout: q/k/v and gate/up are split by output rows (each rank owns whole attention
heads and a slice of the MLP), o_proj and down_proj by input columns, so each block ends in one
all-reduce; the embedding and LM head are split by vocabulary rows. With fewer KV heads than
ranks, ranks that share a KV head each hold a copy of it. A rank's model is an ordinary model of
its local shape (`local_config`) plus the group it reduces over.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..models.config import ModelConfig, UnsupportedModel


@dataclass(frozen=True)
class TensorParallel:
    """This rank's place in its replica; the default is a replica of one rank (no collectives)."""

    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed process group of the replica's ranks

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `x` along the last dimension, in rank order."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def split(self, n: int) -> tuple[int, int]:
        """[start, end) of this rank's equal share of n (n divisible by the size)."""
        per = n // self.size
        return self.rank * per, (self.rank + 1) * per

    def vocab_rows(self, vocab: int) -> tuple[int, int]:
        """[start, start + per_rank) of this rank's vocabulary rows; the last rank's share is padded."""
        per = -(-vocab // self.size)
        return self.rank * per, (self.rank + 1) * per

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """[first, first + count) of the KV heads this rank holds."""
        if num_kv_heads >= self.size:
            return self.split(num_kv_heads)
        first = self.rank * num_kv_heads // self.size  # ranks size/K at a time share a head
        return first, first + 1


def check_divisible(config: ModelConfig, size: int) -> None:
    """Raise UnsupportedModel unless the model splits evenly over `size` ranks."""
    k = config.num_kv_heads
    problems = [f"{name} {n} is not divisible by {size}" for name, n in
                (("attention heads", config.num_heads), ("MLP width", config.intermediate_size)) if n % size]
    if k % size and size % k:
        problems.append(f"KV heads {k} neither divide nor are divisible by {size}")
    if problems:
        raise UnsupportedModel(f"cannot split the model over {size} ranks: " + "; ".join(problems))


def local_config(config: ModelConfig, tp: TensorParallel) -> ModelConfig:
    """The shape of one rank's model: its heads and MLP slice (hidden size and vocabulary stay whole;
    the embedding and LM head split the vocabulary themselves)."""
    if tp.size == 1:
        return config
    check_divisible(config, tp.size)
    first, end = tp.kv_heads(config.num_kv_heads)
    return dataclasses.replace(config, num_heads=config.num_heads // tp.size, num_kv_heads=end - first,
                               intermediate_size=config.intermediate_size // tp.size)


def shard_of(name: str, tensor_shape: tuple[int, ...], config: ModelConfig,
             tp: TensorParallel) -> tuple[int, int, int] | None:
    """Which part of a full checkpoint tensor this rank loads: (dim, start, end), None for all of it.

    `config` is the full model's; rows past a tensor's end (the vocabulary's padding) are zeros."""
    if tp.size == 1:
        return None
    d = config.head_dim
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        start, end = tp.split(config.num_heads)
        return 0, start * d, end * d
    if name.endswith(("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")):
        start, end = tp.kv_heads(config.num_kv_heads)
        return 0, start * d, end * d
    if name.endswith(("gate_proj.weight", "up_proj.weight")):
        return 0, *tp.split(config.intermediate_size)
    if name.endswith("o_proj.weight"):
        start, end = tp.split(config.num_heads)
        return 1, start * d, end * d
    if name.endswith("down_proj.weight"):
        return 1, *tp.split(config.intermediate_size)
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return 0, *tp.vocab_rows(tensor_shape[0])
    return None


def init_group(rank: int, size: int, init_method: str, device: torch.device,
               timeout_s: float) -> TensorParallel:
    """Join the replica's process group: NCCL between GPUs, gloo between CPU ranks."""
    import datetime

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return TensorParallel(rank, size, dist.group.WORLD)
