"""Messages between workers and the router: load reports and numbered KV event batches.

msgspec structs, encoded as JSON on the wire: typed, fast, and never pickle.
"""

from __future__ import annotations

import msgspec

from .kv_events import KVEvent


class StepTotals(msgspec.Struct, frozen=True):
    """A replica's forward passes since it started, in the cost model's terms (`core.step_stats`)."""

    passes: int = 0
    seconds: float = 0.0
    prefill_chunks: int = 0
    prefill_tokens: int = 0
    prefill_pairs: float = 0.0  # sum of new tokens x (new tokens + tokens before the chunk)
    decode_passes: int = 0  # passes with at least one decode
    decode_seqs: int = 0
    decode_context: int = 0  # tokens whose KV the decodes read


class LoadReport(msgspec.Struct, frozen=True):
    """A worker's state as the router's policies need it."""

    worker_id: str
    time: float  # worker clock, seconds
    running: int  # requests in the running batch
    waiting: int  # requests queued for admission
    waiting_tokens: int  # prompt tokens of queued requests
    kv_used_pages: int  # pages held by running requests or the cache
    kv_evictable_pages: int  # of those, pages the cache could evict now
    kv_total_pages: int
    page_size: int
    hit_ratio: float  # prompt tokens served from cache / prompt tokens, over the stats window
    tpot: float  # measured seconds per output token over the stats window; 0.0 if none yet
    num_preemptions: int
    # Work in progress, for routers that predict queueing (defaults: an older worker's report).
    prefill_tokens: int = 0  # prompt tokens still to compute: running prefills' rest, waiting ones' uncached part
    prefill_requests: int = 0  # requests those tokens belong to
    decode_batch: int = 0  # running requests past their prefill
    decode_tokens: int = 0  # their context (tokens whose KV each decode step reads)
    step_tokens: int = 0  # the worker's token budget per forward pass; 0: unknown
    steps: StepTotals = StepTotals()  # its passes so far, with their measured seconds


class KVEventBatch(msgspec.Struct, frozen=True):
    """Events of one worker in order. `seq` increases by one per batch so a subscriber detects a
    gap; a batch with `resync` set carries the worker's whole cache and replaces what the
    subscriber knew."""

    worker_id: str
    seq: int
    events: list[KVEvent]
    resync: bool = False
