"""Workload requests, workloads, their statistics, and the generator registry.

A workload is a list of :class:`WorkloadRequest` built deterministically from a seed and the
source data in ``../shared/data`` (see ``/work/shared/data/README.md``). Generators register
themselves in :data:`WORKLOADS`; :func:`make_workload` builds one by name.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "WorkloadRequest",
    "Workload",
    "WORKLOADS",
    "register",
    "make_workload",
    "default_data_dir",
    "shared_prefix_lengths",
    "poisson_arrivals",
    "stable_seed",
    "text_to_ids",
    "count_tokens",
    "zipf_weights",
]


@dataclass(frozen=True)
class WorkloadRequest:
    """One request of a workload.

    ``arrival`` is seconds from the start of the run (0.0 when the load generator assigns
    arrivals). Exactly one of ``prompt`` (text) and ``prompt_token_ids`` is normally set.
    ``shared_prefix_len`` is the length (tokens when a tokenizer was given or the prompt is token
    ids, else characters) of the part of the prompt meant to be shared with other requests; it is
    informational. ``group`` names the unit of sharing (tool, video, document, episode, ...).
    """

    request_id: str
    arrival: float
    prompt: str | None
    prompt_token_ids: list[int] | None
    max_tokens: int
    shared_prefix_len: int
    group: str


@dataclass
class Workload:
    name: str
    requests: list[WorkloadRequest]
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self):
        return iter(self.requests)

    def sequences(self, tokenizer=None) -> tuple[list[np.ndarray], str]:
        """Each prompt as an integer array, and the unit ("tokens" or "chars")."""
        text_idx = [i for i, r in enumerate(self.requests) if r.prompt_token_ids is None]
        out: list[np.ndarray | None] = [None] * len(self.requests)
        unit = "tokens"
        if text_idx and tokenizer is None:
            if len(text_idx) != len(self.requests):
                raise ValueError("mixed text and token-id prompts need a tokenizer for stats")
            unit = "chars"
        if text_idx:
            texts = [self.requests[i].prompt or "" for i in text_idx]
            if tokenizer is None:
                arrays = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32) for t in texts]
            else:
                enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
                arrays = [np.asarray(ids, dtype=np.int64) for ids in enc]
            for i, a in zip(text_idx, arrays):
                out[i] = a
        for i, r in enumerate(self.requests):
            if out[i] is None:
                out[i] = np.asarray(r.prompt_token_ids, dtype=np.int64)
        return out, unit  # type: ignore[return-value]

    def stats(self, tokenizer=None) -> dict[str, Any]:
        """Size, prompt lengths, output lengths, prompt/output ratio and the shared fraction.

        ``shared_fraction``: over all prompts, the fraction of prompt tokens (chars without a
        tokenizer for text prompts) that equal a prefix of some *other* prompt of the workload
        (exact longest common prefix with the nearest neighbour in sorted order).
        ``shared_fraction_mean`` is the same per prompt, averaged.
        """
        n = len(self.requests)
        if n == 0:
            return {"name": self.name, "num_requests": 0}
        seqs, unit = self.sequences(tokenizer)
        lens = np.array([len(s) for s in seqs], dtype=np.float64)
        outs = np.array([r.max_tokens for r in self.requests], dtype=np.float64)
        shared = np.asarray(shared_prefix_lengths(seqs), dtype=np.float64)
        total = float(lens.sum())
        per = np.divide(shared, lens, out=np.zeros_like(shared), where=lens > 0)
        arrivals = [r.arrival for r in self.requests]
        return {
            "name": self.name,
            "unit": unit,
            "num_requests": n,
            "num_groups": len({r.group for r in self.requests}),
            "prompt_len_mean": float(lens.mean()),
            "prompt_len_p50": float(np.percentile(lens, 50)),
            "prompt_len_p99": float(np.percentile(lens, 99)),
            "output_len_mean": float(outs.mean()),
            "prompt_output_ratio": float(lens.mean() / outs.mean()) if outs.mean() > 0 else float("inf"),
            "shared_fraction": float(shared.sum() / total) if total > 0 else 0.0,
            "shared_fraction_mean": float(per.mean()),
            "duration_s": float(max(arrivals) - min(arrivals)),
        }


def _lcp(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    if m == 0:
        return 0
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if len(diff) else m


def shared_prefix_lengths(seqs: Sequence[Sequence[int] | np.ndarray]) -> list[int]:
    """For each sequence, the length of its longest common prefix with any *other* sequence.

    In lexicographic order the other sequence sharing the longest prefix with ``s`` is one of
    ``s``'s two neighbours, so sorting plus two LCPs per sequence is exact.
    """
    arrs = [np.asarray(s) for s in seqs]
    n = len(arrs)
    if n < 2:
        return [0] * n
    order = sorted(range(n), key=lambda i: arrs[i].tolist())
    adj = [_lcp(arrs[order[k]], arrs[order[k + 1]]) for k in range(n - 1)]
    res = [0] * n
    for k, i in enumerate(order):
        left = adj[k - 1] if k > 0 else 0
        right = adj[k] if k < n - 1 else 0
        res[i] = max(left, right)
    return res


def reusable_prefix_lengths(seqs: Sequence[Sequence[int] | np.ndarray], page_size: int) -> list[int]:
    """For each sequence in order, how many of its leading tokens an earlier sequence began with,
    in whole pages of `page_size` tokens: what a cache that kept every earlier prompt's pages
    could serve it (the first prompt of each prefix has to compute it)."""
    seen: set[int] = set()
    out = []
    for seq in seqs:
        arr = np.asarray(seq, dtype=np.int64)
        key, reused, matching = 0, 0, True
        for start in range(0, len(arr) - len(arr) % page_size, page_size):
            key = hash((key, arr[start:start + page_size].tobytes()))
            if matching and key in seen:
                reused += page_size
            else:
                matching = False
                seen.add(key)
        out.append(reused)
    return out


# --------------------------------------------------------------------------- helpers


def default_data_dir() -> Path:
    """``$PREBLE_DATA``, else ``<repo root>/../shared/data``."""
    env = os.environ.get("PREBLE_DATA")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[3]
    return (repo_root.parent / "shared" / "data").resolve()


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """`n` arrival times (s) of a Poisson process at `rate` per second, the first at 0: the one
    arrival process of the simulator, the load generator and the comparisons (same seed, same
    times)."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from arbitrary parts, stable across processes (no ``hash()``)."""
    h = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def text_to_ids(text: str, tokenizer=None) -> list[int]:
    """Text as token ids: the tokenizer's (no special tokens), else UTF-8 bytes (0..255)."""
    if tokenizer is None:
        return list(text.encode("utf-8"))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def count_tokens(text: str, tokenizer=None) -> int:
    """Length of ``text`` in tokens with a tokenizer, else in characters."""
    if tokenizer is None:
        return len(text)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def zipf_weights(n: int, a: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
    return w / w.sum()


def vocab_range(tokenizer=None, vocab_size: int | None = None) -> tuple[int, int, set[int]]:
    """(low, high, excluded) for pseudo token ids: above the byte range, below the vocab size,
    avoiding the tokenizer's special ids."""
    if vocab_size is None:
        vocab_size = len(tokenizer) if tokenizer is not None else 32000
    low = min(1000, vocab_size // 2)
    excluded = set(getattr(tokenizer, "all_special_ids", []) or []) if tokenizer is not None else set()
    return low, vocab_size, excluded


def random_ids(rng: np.random.Generator, n: int, low: int, high: int, excluded: set[int]) -> np.ndarray:
    ids = rng.integers(low, high, size=n, dtype=np.int64)
    if excluded:
        bad = np.isin(ids, list(excluded))
        while bad.any():
            ids[bad] = rng.integers(low, high, size=int(bad.sum()), dtype=np.int64)
            bad = np.isin(ids, list(excluded))
    return ids


# --------------------------------------------------------------------------- registry

Generator = Callable[..., Workload]
WORKLOADS: dict[str, Generator] = {}


def register(name: str) -> Callable[[Generator], Generator]:
    def deco(fn: Generator) -> Generator:
        WORKLOADS[name] = fn
        return fn

    return deco


def make_workload(
    name: str,
    *,
    num_requests: int | None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    tokenizer=None,
    **params: Any,
) -> Workload:
    """Build workload ``name`` (a key of :data:`WORKLOADS`); deterministic in ``seed``."""
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; known: {sorted(WORKLOADS)}")
    ddir = Path(data_dir) if data_dir is not None else default_data_dir()
    return WORKLOADS[name](num_requests=num_requests, seed=seed, data_dir=ddir, tokenizer=tokenizer, **params)
