"""Per-hop timing of one request, asked for with a header.

A request carrying `TIMING_HEADER` (any value) gets, in its usage chunk or body, a `timing` object
with the wall-clock time at which each hop saw it (`HOPS`, in path order); the router passes the
header on to the worker, and the worker's times come back inside the router's answer.
"""

from __future__ import annotations

import time

TIMING_HEADER = "x-preble-timing"
HOPS = ("router_received", "worker_received", "engine_admitted", "engine_first_token", "worker_first_sent",
        "router_first_sent")


def wants_timing(headers) -> float | None:
    """Now (wall clock), if the request asked for per-hop timing; else None."""
    return time.time() if TIMING_HEADER in headers else None
