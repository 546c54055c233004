"""Benchmark workloads: the five Preble workloads, a synthetic shared-prefix workload and
trace replays (Mooncake hash-id trace, Azure timestamp trace).

    from preble.bench.workloads import make_workload
    wl = make_workload("toolbench", num_requests=200, seed=0)
    print(wl.stats(tokenizer))
"""

from . import agent, loogle, programming, shared_prefix, toolbench, trace, videoqa  # noqa: F401  (each registers itself)
from .base import (
    WORKLOADS,
    Workload,
    WorkloadRequest,
    default_data_dir,
    make_workload,
    poisson_arrivals,
    reusable_prefix_lengths,
    shared_prefix_lengths,
)

__all__ = [
    "WORKLOADS",
    "Workload",
    "WorkloadRequest",
    "default_data_dir",
    "make_workload",
    "poisson_arrivals",
    "reusable_prefix_lengths",
    "shared_prefix_lengths",
]
