"""Replay a user's own traffic: a JSONL trace file, one request per line.

Two formats, detected per file from its first row and required of every row after it:

- **Mooncake-style** (a row has ``hash_ids``): the format of kvcache-ai/Mooncake's released
  traces (``FAST25-release/traces/{synthetic,conversation}_trace.jsonl``, README at commit
  40ea55f8): ``timestamp`` (milliseconds), ``input_length``, ``output_length`` (tokens) and
  ``hash_ids``, one id per ``block_size``-token block of the prompt (512 in those traces, where
  a row has ceil(input_length / 512) ids); equal ids at equal positions are the same block.
  Prompts are rebuilt as :func:`.trace.make_mooncake` always has: block ``h`` is a fixed function
  of (``seed``, ``h``), the last block is cut to ``input_length``, and a row with fewer ids than
  its length needs (a hasher that skips the trailing partial block) is padded with tokens of its
  own.
- **Token ids** (a row has ``prompt_token_ids``): ``timestamp`` (seconds, int or float: the
  unit of our arrivals and of ``--jsonl`` records), ``prompt_token_ids`` (a non-empty list of
  ints) and ``output_length`` (the Mooncake name, so one row shape serves both formats).

Rows may come in any order: they are sorted by timestamp (stably, so ties keep file order) and
arrivals count from the earliest, x ``time_scale``. ``output_length`` 0 asks for 1 token, as
every engine generates at least one. Extra fields are ignored. What cannot be replayed is a
:class:`TraceError` naming the file, the line and the field: a missing field, a wrong type, a
negative length, an empty prompt, a non-finite timestamp, a token id outside the vocabulary
(checked when the vocabulary is known), more hash ids than the prompt has blocks (the wrong block
size), mixed formats, a line that is not a JSON object, and an empty file.

Deviation from Mooncake: their ids stand for hashed blocks of real text; ours are synthetic
token ids, since the trace carries no content (the prefix structure is exact all the same).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .base import Workload, WorkloadRequest, random_ids, stable_seed, vocab_range
from .trace import BLOCK, block_tokens

MOONCAKE = "mooncake"
TOKENS = "tokens"
FORMAT_KEYS = {MOONCAKE: "hash_ids", TOKENS: "prompt_token_ids"}  # the field that marks a row's format
FORMAT_NAMES = {MOONCAKE: "Mooncake-style", TOKENS: "token-id"}
SECONDS_PER_UNIT = {MOONCAKE: 1000.0, TOKENS: 1.0}  # timestamp units: Mooncake's are ms, ours s
SHOW_CHARS = 40  # how much of a bad value an error message quotes


@dataclass(frozen=True)
class TraceConfig:
    """How a trace becomes a workload."""

    block_size: int = BLOCK  # trace.BLOCK: Mooncake's traces hash 512-token blocks
    seed: int = 0  # seeds the synthetic tokens of each hash id (trace.block_tokens)
    time_scale: float = 1.0  # 1 = the trace's own pace; < 1 compresses it
    start_row: int = 0  # first request taken, in time order (make_mooncake's start_row)
    num_requests: int | None = None  # requests taken from start_row on; None = all
    vocab_size: int | None = None  # None: the tokenizer's, else base.vocab_range's 32000
    id_prefix: str = "trace"  # request ids are f"{id_prefix}-{position in time order}"


class TraceError(ValueError):
    """A trace file that cannot be replayed; ``line`` and ``field`` say where (None: the file)."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str) -> None:
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: field {field!r} {problem}" if field else f"{where}: {problem}")

    def __reduce__(self):
        """Rebuilt from its own arguments: the benchmarks prepare traces in worker processes, and
        the default (the message as the only argument) could not be unpickled in the parent."""
        return type(self), (self.path, self.line, self.field, self.problem)


@dataclass(frozen=True, slots=True)
class TraceRow:
    timestamp: float  # in the format's unit (SECONDS_PER_UNIT)
    output_length: int
    input_length: int  # len(prompt_token_ids) for a token-id row
    hash_ids: list[int] | None  # Mooncake-style rows
    prompt_token_ids: list[int] | None  # token-id rows


@dataclass(frozen=True)
class Trace:
    path: Path
    format: str  # MOONCAKE or TOKENS
    rows: list[TraceRow]  # sorted by timestamp, ties in file order


# --------------------------------------------------------------------------- reading


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS - 3] + "..."


def _get(obj: dict, name: str, err):
    if name not in obj:
        raise err(name, "is missing")
    return obj[name]


def _int(obj: dict, name: str, err, minimum: int) -> int:
    value = _get(obj, name, err)
    if type(value) is not int:  # bool is an int subclass: excluded on purpose
        raise err(name, f"must be an integer, got {_show(value)}")
    if value < minimum:
        raise err(name, f"must be >= {minimum}, got {value}")
    return value


def _timestamp(obj: dict, err) -> float:
    value = _get(obj, "timestamp", err)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise err("timestamp", f"must be a finite number, got {_show(value)}")
    return value


def _int_list(obj: dict, name: str, err, low: int | None = None, high: int | None = None) -> list[int]:
    """A list of ints in [low, high) (None: unbounded), else the first bad item as the field."""
    value = _get(obj, name, err)
    if type(value) is not list:
        raise err(name, f"must be a list of integers, got {_show(value)}")
    lo = -math.inf if low is None else low
    hi = math.inf if high is None else high
    bad = next((i for i, x in enumerate(value) if type(x) is not int or not lo <= x < hi), None)
    if bad is not None:
        bounds = f" in [{low}, {high})" if high is not None else f" >= {low}" if low is not None else ""
        raise err(f"{name}[{bad}]", f"must be an integer{bounds}, got {_show(value[bad])}")
    return value


def _row_format(obj: dict, err, fmt: str | None, first: int | None) -> str:
    """The format the first row's key field names; later rows must not carry the other key."""
    found = [f for f, key in FORMAT_KEYS.items() if key in obj]
    if fmt is None:
        if len(found) != 1:
            raise err(None, "the first row needs exactly one of 'hash_ids' (Mooncake-style) and "
                            f"'prompt_token_ids' (token ids); it has {'both' if found else 'neither'}")
        return found[0]
    for other in found:
        if other != fmt:
            raise err(FORMAT_KEYS[other], f"marks a {FORMAT_NAMES[other]} row, but line {first} made this a "
                                          f"{FORMAT_NAMES[fmt]} trace: one format per file")
    return fmt


def _mooncake_row(obj: dict, err, block_size: int) -> TraceRow:
    ts = _timestamp(obj, err)
    n = _int(obj, "input_length", err, 1)
    out = _int(obj, "output_length", err, 0)
    ids = _int_list(obj, "hash_ids", err)
    blocks = -(-n // block_size)  # ceil: the last block may be partial
    if len(ids) > blocks:
        raise err("hash_ids", f"has {len(ids)} ids but input_length {n} fills only {blocks} block(s) of "
                              f"{block_size} tokens (is {block_size} the trace's block size?)")
    return TraceRow(ts, out, n, ids, None)


def _token_row(obj: dict, err, vocab_limit: int | None) -> TraceRow:
    ts = _timestamp(obj, err)
    ids = _int_list(obj, "prompt_token_ids", err, 0, vocab_limit)
    if not ids:
        raise err("prompt_token_ids", "is empty: a prompt needs at least one token")
    return TraceRow(ts, _int(obj, "output_length", err, 0), len(ids), None, ids)


def _parse_line(raw: bytes, line: int, path: Path) -> dict:
    err = partial(TraceError, path, line)
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise err(None, "is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise err(None, f"is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise err(None, f"must be a JSON object, got {_show(obj)}")
    return obj


def read_trace(path: str | Path, cfg: TraceConfig = TraceConfig(), vocab_limit: int | None = None) -> Trace:
    """Parse and check every row of ``path`` (``vocab_limit``: token ids must be below it)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(path, None, None, f"cannot be read ({exc.strerror or exc})") from None
    fmt, first, rows = None, None, []
    for line, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        obj = _parse_line(raw, line, path)
        err = partial(TraceError, path, line)
        fmt, first = _row_format(obj, err, fmt, first), first or line
        rows.append(_mooncake_row(obj, err, cfg.block_size) if fmt == MOONCAKE else _token_row(obj, err, vocab_limit))
    if fmt is None:
        raise TraceError(path, None, None, "has no requests (the file is empty)")
    rows.sort(key=lambda r: r.timestamp)
    return Trace(path, fmt, rows)


# --------------------------------------------------------------------------- building


def _mooncake_prompt(row: TraceRow, index: int, blocks: dict[int, list[int]], cfg: TraceConfig,
                     vocab: tuple[int, int, set[int]]) -> list[int]:
    """The row's blocks (shared through ``blocks``), cut or uniquely padded to its length."""
    low, high, excluded = vocab
    ids: list[int] = []
    for h in row.hash_ids:
        if h not in blocks:
            blocks[h] = block_tokens(cfg.seed, h, low, high, excluded, size=cfg.block_size)
        ids.extend(blocks[h])
    if len(ids) < row.input_length:
        rng = np.random.default_rng(stable_seed("mooncake-pad", cfg.seed, index))
        ids.extend(random_ids(rng, row.input_length - len(ids), low, high, excluded).tolist())
    del ids[row.input_length:]
    return ids


def build_workload(trace: Trace, cfg: TraceConfig, name: str, tokenizer=None) -> Workload:
    """The requests of ``trace`` from ``cfg.start_row`` on, at most ``cfg.num_requests``."""
    rows: Sequence[TraceRow] = trace.rows[cfg.start_row:]
    if cfg.num_requests is not None:
        rows = rows[:cfg.num_requests]
    unit = SECONDS_PER_UNIT[trace.format]
    t0 = rows[0].timestamp if rows else 0
    mooncake = trace.format == MOONCAKE
    vocab = vocab_range(tokenizer, cfg.vocab_size)
    blocks: dict[int, list[int]] = {}
    reqs = []
    for i, row in enumerate(rows, start=cfg.start_row):
        reqs.append(WorkloadRequest(
            request_id=f"{cfg.id_prefix}-{i}",
            arrival=(row.timestamp - t0) / unit * cfg.time_scale,
            prompt=None,
            prompt_token_ids=_mooncake_prompt(row, i, blocks, cfg, vocab) if mooncake else list(row.prompt_token_ids),
            max_tokens=max(1, row.output_length),
            shared_prefix_len=0,
            group=f"h{row.hash_ids[0]}" if mooncake and row.hash_ids else "",
        ))
    params = dict(path=str(trace.path), format=trace.format, block_size=cfg.block_size, seed=cfg.seed,
                  time_scale=cfg.time_scale, start_row=cfg.start_row, num_requests=cfg.num_requests)
    return Workload(name, reqs, params)


def load_trace(path: str | Path, *, block_size: int = TraceConfig.block_size, seed: int = 0,
               time_scale: float = 1.0, num_requests: int | None = None, vocab_size: int | None = None,
               tokenizer=None) -> Workload:
    """The workload of a trace file, named after the file; raises :class:`TraceError`.

    Token ids of a token-id trace are checked against ``vocab_size`` (else the tokenizer's
    size) when one is given; Mooncake prompts are drawn below it (``base.vocab_range``)."""
    cfg = TraceConfig(block_size=block_size, seed=seed, time_scale=time_scale, num_requests=num_requests,
                      vocab_size=vocab_size)
    limit = vocab_size if vocab_size is not None else len(tokenizer) if tokenizer is not None else None
    return build_workload(read_trace(path, cfg, limit), cfg, Path(path).name, tokenizer)
