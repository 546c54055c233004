"""The local scheduler's configuration, apart from the scheduler (preble/core/scheduler.py) so
that the command line and the router's policies read its defaults without importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 2048  # token budget of one forward pass
    max_prefill_chunk: int | None = None  # cap on one request's prefill tokens per step
    max_running_requests: int = 256
    max_model_len: int | None = None  # context window (prompt + output); None: the KV pool's size
    kv_watermark: float = 0.01  # fraction of pages admissions leave free for decodes
    local_policy: str = "preble"  # fcfs | lpm | preble
