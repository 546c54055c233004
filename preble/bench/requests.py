"""Workload requests as the requests of each target: one conversion per target.

:func:`load_request` makes the load generator's :class:`LoadRequest` (a live server),
:func:`sim_request` the simulator's :class:`SimRequest`. Every caller converts through these;
what differs between callers (a prompt rewritten as text, an output cap, arrival times of
their own) is an argument, not another copy.
"""

from __future__ import annotations

from ..sim.cluster import SimRequest
from .loadgen import LoadRequest
from .workloads.base import WorkloadRequest

__all__ = ["load_request", "sim_request"]


def load_request(r: WorkloadRequest, *, prompt: str | list[int] | None = None,
                 max_tokens_cap: int | None = None) -> LoadRequest:
    """`r` for the load generator: its text prompt, else its token ids; its own arrival (read
    only when the load has no rate).

    `prompt` replaces the prompt (e.g. the text of a cut-down one); `max_tokens_cap` caps the
    output length (None: the workload's)."""
    if prompt is None:
        prompt = r.prompt if r.prompt is not None else list(r.prompt_token_ids)
    max_tokens = r.max_tokens if max_tokens_cap is None else min(r.max_tokens, max_tokens_cap)
    return LoadRequest(r.request_id, prompt, max_tokens, r.arrival)


def sim_request(r: WorkloadRequest, *, arrival: float | None = None, tokenizer=None) -> SimRequest:
    """`r` for the simulator: its token ids, or its text tokenised with `tokenizer` (no special
    tokens); at `arrival` (seconds; None: the workload's own)."""
    ids = r.prompt_token_ids
    if ids is None:
        if tokenizer is None:
            raise ValueError(f"request {r.request_id!r} has a text prompt: the simulator needs a tokenizer")
        ids = tokenizer.encode(r.prompt, add_special_tokens=False)
    return SimRequest(r.request_id, r.arrival if arrival is None else arrival, ids, r.max_tokens)
