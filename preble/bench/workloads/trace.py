"""Trace replay: the Mooncake hash-id trace and the Azure LLM inference (code) trace.

``mooncake`` (``mooncake_synthetic_trace.jsonl``): one 512-token block per hash id; the block of
id ``h`` is a deterministic function of (``seed``, ``h``), so equal ids give equal blocks and the
prefix tree of the trace is exact. The last block is cut to ``input_length``. Arrivals are
``timestamp`` (ms) / 1000 x ``time_scale``; outputs are ``output_length``. The rows are read and
the prompts built by ``trace_file`` (which replays any file of this format, ``--trace``).

``azure`` (``AzureLLMInferenceTrace_code.csv``): only timestamps and token counts, so each prompt
is ``ContextTokens`` unique random tokens; outputs are ``GeneratedTokens``. Rows from
``start_row`` on; arrivals relative to that row, x ``time_scale``. ``paper=True`` replays as the
Preble paper does: from row 200, compressed by 0.7 (``start_row=200, time_scale=0.7``).

For both, ``num_requests`` (alias ``max_requests``) limits the rows taken; None = all.
"""

from __future__ import annotations

import csv
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import Workload, WorkloadRequest, random_ids, register, stable_seed, vocab_range

BLOCK = 512
MOONCAKE_FILE = "mooncake_synthetic_trace.jsonl"
AZURE_FILE = "AzureLLMInferenceTrace_code.csv"


@lru_cache(maxsize=2)
def load_mooncake(data_dir: str):
    """The checked rows of the Mooncake trace (a :class:`.trace_file.Trace`), read once."""
    from .trace_file import read_trace  # trace_file builds on this module's block_tokens

    return read_trace(Path(data_dir) / MOONCAKE_FILE)


def _limit(num_requests: int | None, max_requests: int | None) -> int | None:
    if num_requests is not None and max_requests is not None:
        return min(num_requests, max_requests)
    return num_requests if num_requests is not None else max_requests


def block_tokens(seed: int, hash_id: int, low: int, high: int, excluded: set[int], size: int = BLOCK) -> list[int]:
    rng = np.random.default_rng(stable_seed("mooncake-block", seed, int(hash_id)))
    return random_ids(rng, size, low, high, excluded).tolist()


@register("mooncake")
def make_mooncake(
    *,
    num_requests: int | None,
    seed: int,
    data_dir: Path,
    tokenizer=None,
    max_requests: int | None = None,
    time_scale: float = 1.0,
    start_row: int = 0,
    vocab_size: int | None = None,
) -> Workload:
    from .trace_file import TraceConfig, build_workload

    limit = _limit(num_requests, max_requests)
    cfg = TraceConfig(block_size=BLOCK, seed=seed, time_scale=time_scale, start_row=start_row,
                      num_requests=limit, vocab_size=vocab_size, id_prefix="mooncake")
    wl = build_workload(load_mooncake(str(data_dir)), cfg, "mooncake", tokenizer)
    params = dict(time_scale=time_scale, start_row=start_row, max_requests=limit, block=BLOCK)
    return Workload("mooncake", wl.requests, params)


def _parse_ts(s: str) -> float:
    s = s.strip()
    if "." in s:  # fractions of a second with up to 7 digits
        head, frac = s.split(".", 1)
        base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S")
        return base.timestamp() + float("0." + frac)
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S").timestamp()


@lru_cache(maxsize=2)
def load_azure(data_dir: str) -> list[tuple[float, int, int]]:
    """[(seconds, context tokens, generated tokens)] in file order."""
    path = Path(data_dir) / AZURE_FILE
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            (_parse_ts(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
            for r in csv.DictReader(fh)
        ]


@register("azure")
def make_azure(
    *,
    num_requests: int | None,
    seed: int,
    data_dir: Path,
    tokenizer=None,
    max_requests: int | None = None,
    start_row: int | None = None,
    time_scale: float | None = None,
    paper: bool = False,
    vocab_size: int | None = None,
) -> Workload:
    if start_row is None:
        start_row = 200 if paper else 0
    if time_scale is None:
        time_scale = 0.7 if paper else 1.0
    rows = load_azure(str(data_dir))[start_row:]
    limit = _limit(num_requests, max_requests)
    rows = rows[:limit] if limit is not None else rows
    low, high, excluded = vocab_range(tokenizer, vocab_size)
    rng = np.random.default_rng(stable_seed("azure", seed))
    t0 = rows[0][0] if rows else 0.0
    reqs = []
    for i, (ts, ctx, gen) in enumerate(rows):
        reqs.append(
            WorkloadRequest(
                request_id=f"azure-{start_row + i}",
                arrival=(ts - t0) * time_scale,
                prompt=None,
                prompt_token_ids=random_ids(rng, max(1, ctx), low, high, excluded).tolist(),
                max_tokens=max(1, gen),
                shared_prefix_len=0,
                group=f"azure-{start_row + i}",
            )
        )
    return Workload("azure", reqs, dict(start_row=start_row, time_scale=time_scale, max_requests=limit))
