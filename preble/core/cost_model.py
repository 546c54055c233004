"""How long a forward pass takes: the router's and the simulator's unit of cost (GPU seconds).

A linear model, cheap enough to call for every candidate replica of every routing decision:

    prefill_time(new, cached) = a + b*new + c*new*(new + cached)      (0 when new == 0)
    decode_step_time(batch, context) = d + e*batch + f*context

`b` is the matmul cost of a token, `c` the attention cost of a (query, key) pair, `a` and `d` the
fixed cost of a pass (weights read once), `e` the per-sequence cost of a decode step and `f` the
cost of reading one cached token's KV. The defaults are first-principles numbers for a
Llama-3-8B-shaped model (8.03e9 parameters, bf16, 32 layers, GQA 32/8, head dim 128) on the
H100 80GB (766 TFLOP/s bf16 matmul, 2.95 TB/s copy); `preble profile` fits the real ones and saves them as
JSON (schema below), which the router and the simulator load. `tensor_parallel` derives the cost
of the same model split over several GPUs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

SCHEMA = "preble.cost_model"
SCHEMA_VERSION = 1

_PARAMS = 8.03e9  # Llama-3-8B parameters
_MATMUL_FLOPS = 766e12 * 0.6  # measured bf16 matmul peak at the ~60% MFU a real prefill reaches
_ATTN_FLOPS_PER_PAIR = 4 * 4096 * 32  # QK^T and AV over 32 layers of 32 heads x 128 dims
_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 KV heads, 128 dims, bf16
_HBM_BYTES_PER_S = 3.0e12  # effective read bandwidth (copy measured 2.95 TB/s read + write)


@dataclass(frozen=True)
class Interconnect:
    """What the all-reduces of a tensor-parallel replica cost: defaults for H100 SXM GPUs on NVLink 4
    and the Llama-3-8B shape (two all-reduces of the hidden state per layer)."""

    latency_s: float = 10e-6  # one small all-reduce
    bytes_per_s: float = 150e9  # bus bandwidth a ring all-reduce sustains
    hidden_size: int = 4096
    num_layers: int = 32
    dtype_bytes: int = 2


@dataclass(frozen=True)
class CostModel:
    # prefill
    a: float = 2.0e-3  # s per prefill pass: launch, sampling, the weight read amortised over a chunk
    b: float = 2 * _PARAMS / _MATMUL_FLOPS  # s per new token (~35 us)
    c: float = _ATTN_FLOPS_PER_PAIR / (_MATMUL_FLOPS * 0.5)  # s per (new, context) token pair; attention runs at ~half matmul efficiency
    # decode
    d: float = 6.0e-3  # s per decode step: 16.1 GB of weights at 2.95 TB/s is 5.4 ms, plus overheads
    e: float = 1.5e-5  # s per sequence in the batch (its matmul row, sampling, bookkeeping)
    f: float = _KV_BYTES_PER_TOKEN / _HBM_BYTES_PER_S  # s per context token whose KV is read (~44 ns)
    description: str = "default: Llama-3-8B shape on H100 80GB, first principles, not measured"

    def prefill_time(self, new_tokens: int, cached_tokens: int = 0) -> float:
        """Seconds to prefill `new_tokens` after `cached_tokens` already in the KV cache."""
        if new_tokens <= 0:
            return 0.0
        return self.a + self.b * new_tokens + self.c * new_tokens * (new_tokens + cached_tokens)

    def decode_step_time(self, batch_size: int, total_context_tokens: int) -> float:
        """Seconds of one decode step of `batch_size` sequences holding `total_context_tokens`."""
        if batch_size <= 0:
            return 0.0
        return self.d + self.e * batch_size + self.f * total_context_tokens

    def prefill_times(self, new_tokens: np.ndarray, cached_tokens: np.ndarray) -> np.ndarray:
        """`prefill_time` of each element: a router prices every worker at once."""
        t = self.a + self.b * new_tokens + self.c * new_tokens * (new_tokens + cached_tokens)
        return np.where(new_tokens > 0, t, 0.0)

    def decode_step_times(self, batch_sizes: np.ndarray, total_context_tokens: np.ndarray) -> np.ndarray:
        """`decode_step_time` of each element."""
        return np.where(batch_sizes > 0, self.d + self.e * batch_sizes + self.f * total_context_tokens, 0.0)

    def tpot(self, batch_size: int = 1, total_context_tokens: int = 0) -> float:
        """Estimated seconds per output token of one request in such a batch (one step each)."""
        return self.decode_step_time(max(1, batch_size), total_context_tokens)

    def tensor_parallel(self, degree: int, link: Interconnect = Interconnect()) -> CostModel:
        """This model split over `degree` GPUs: matmuls, attention and weight and KV reads divide
        by the degree; fixed and per-sequence host work (`a`, `e`) does not; every pass adds two
        all-reduces per layer, a latency each plus a ring's traffic per token."""
        if degree < 1:
            raise ValueError("degree must be at least 1")
        if degree == 1:
            return self
        per_pass = 2 * link.num_layers * link.latency_s
        per_token = (2 * link.num_layers * 2 * (degree - 1) / degree * link.hidden_size * link.dtype_bytes
                     / link.bytes_per_s)
        return replace(self, a=self.a + per_pass, b=self.b / degree + per_token, c=self.c / degree,
                       d=self.d / degree + per_pass, e=self.e + per_token, f=self.f / degree,
                       description=f"{self.description}; split over {degree} GPUs (modelled)")

    @staticmethod
    def decode_time(output_tokens: float, tpot: float) -> float:
        """Seconds to produce `output_tokens` at `tpot` seconds per output token."""
        return max(0, output_tokens) * tpot

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        p = asdict(self)
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "description": p.pop("description"),
                "prefill": {k: p[k] for k in "abc"}, "decode": {k: p[k] for k in "def"}}

    @classmethod
    def from_dict(cls, data: dict) -> CostModel:
        if data.get("schema") != SCHEMA or data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"not a {SCHEMA} v{SCHEMA_VERSION} document: "
                             f"schema={data.get('schema')!r} version={data.get('version')!r}")
        params = {**data["prefill"], **data["decode"]}
        unknown = set(params) - set("abcdef")
        if unknown:
            raise ValueError(f"unknown cost model parameters: {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in params.items()},
                   description=str(data.get("description", "")))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        """A cost model file, or the output of `preble profile` (which holds one with its samples)."""
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data.get("cost_model", data))
