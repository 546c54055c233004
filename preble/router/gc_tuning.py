"""Python's garbage collector, set for a process that keeps a large, long-lived prefix tree.

With the default thresholds a young collection runs every ~700 net allocations and, once the
tree is large, stalls a routing decision for a millisecond or more. Freezing what exists after
start-up and collecting young objects every 20k allocations keeps the total collector time but
moves it off the decision tail (see `preble bench router`).
"""

from __future__ import annotations

import gc

ROUTER_GC_THRESHOLD = (20_000, 20, 10)


def tune_gc() -> tuple[int, int, int]:
    """Freeze current objects and apply the router's thresholds; return the previous ones."""
    gc.collect()
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(*ROUTER_GC_THRESHOLD)
    return old
