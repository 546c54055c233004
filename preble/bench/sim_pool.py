"""The simulation processes of `bench compare` and `bench grid`, and the workloads they hold.

Processes are started fresh ("spawn"): a child forked from a process whose torch or tokenizer
threads are running can deadlock in their locks. The prepared workloads go to each child once,
when it starts (`install`, the pools' initializer), into that process's `registry`; tasks look
them up there by name (`registry.get`), so they travel as names, not as copies of the workload.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .prepare import Prepared


class WorkloadRegistry:
    """Prepared workloads by name, in one process. Per process: nothing here is shared between
    processes; a pool's initializer (`install`) fills each child's own, and the parent's stays
    empty unless it installs too (a test running tasks in-process)."""

    def __init__(self) -> None:
        self._prepared: dict[str, Prepared] = {}

    def install(self, prepared: dict[str, Prepared]) -> None:
        self._prepared.update(prepared)

    def get(self, name: str) -> Prepared:
        return self._prepared[name]


registry = WorkloadRegistry()  # this process's workloads


def install(prepared: dict[str, Prepared]) -> None:
    """The pools' initializer: `prepared` into the child's `registry` (a module-level function,
    so the child finds its own registry rather than unpickling a copy)."""
    registry.install(prepared)


def spawn_pool(jobs: int, prepared: dict[str, Prepared] | None = None) -> ProcessPoolExecutor:
    """`jobs` fresh processes; `prepared` is copied to each child once (prompts that repeat are
    one object, so the copy stays small)."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=install if prepared else None,
                               initargs=(prepared,) if prepared else ())


def map_until_deadline(jobs: int, prepared: dict[str, Prepared], fn: Callable, tasks: list[tuple],
                       start: float, deadline_s: float | None) -> list[Any]:
    """Results of `fn` over `tasks`, in order, made by `jobs` fresh processes holding `prepared`,
    stopping at the deadline (`deadline_s` after `start`, on `time.monotonic`): the processes are
    then terminated, runs in flight and not started are dropped."""
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(jobs, initializer=install, initargs=(prepared,))
    try:
        pending = [pool.apply_async(fn, t) for t in tasks]
        out = []
        for p in pending:
            left = None if deadline_s is None else deadline_s - (time.monotonic() - start)
            try:
                out.append(p.get(timeout=max(0.0, left) if left is not None else None))
            except multiprocessing.TimeoutError:
                break
        return out
    finally:
        pool.terminate()
        pool.join()
