"""What `preble bench routers` compares and how: the routers, the workloads' presets, the
workers' set-up (kept apart from the benchmark so that the command line loads without it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.pages import DEFAULT_PAGE_SIZE


@dataclass(frozen=True)
class RouterKind:
    """How to find and start one kind of peer router."""

    executable: str  # console script on PATH
    env: str  # environment variable naming the executable instead
    distribution: str  # Python distribution, for its version
    subcommand: tuple[str, ...] = ()
    log_level: str = "warn"


PEER_KINDS: dict[str, RouterKind] = {
    "sglang": RouterKind("sglang-router", "PREBLE_SGLANG_ROUTER", "sglang-router", ("launch",), "warn"),
    "vllm": RouterKind("vllm-router", "PREBLE_VLLM_ROUTER", "vllm-router", (), "warning"),
}


@dataclass(frozen=True)
class RouterSpec:
    """`kind:policy`, e.g. `preble:e2`, `sglang:cache_aware`, `vllm:round_robin`."""

    kind: str
    policy: str

    @classmethod
    def parse(cls, text: str) -> RouterSpec:
        kind, sep, policy = text.strip().partition(":")
        if not sep or not policy or kind not in ("preble", *PEER_KINDS):
            raise ValueError(f"router {text!r}: expected KIND:POLICY, KIND one of preble, {', '.join(PEER_KINDS)}")
        return cls(kind, policy)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.policy}"


@dataclass(frozen=True)
class WorkloadRun:
    """One workload of the comparison: its parameters, how many requests, at which rate."""

    name: str
    rate: float  # Poisson arrivals per second
    num_requests: int
    params: Mapping[str, Any] = field(default_factory=dict)


# Three demo-model workers (one torch thread each) on a 2-core machine: about 70 s of arrivals
# per run, at a rate a little under where e2's latency turns up (its knee on that machine).
CPU_WORKLOADS: tuple[WorkloadRun, ...] = (
    WorkloadRun("toolbench", 0.45, 32, {"max_tokens": 16}),
    WorkloadRun("agent", 0.6, 42, {"max_tokens_cap": 16}),
    WorkloadRun("programming", 0.5, 35, {"min_tokens": 8, "median_tokens": 16, "max_tokens": 32}),
    WorkloadRun("videoqa", 0.45, 32, {"max_tokens": 8}),
    WorkloadRun("loogle", 0.5, 35, {"max_tokens_cap": 16}),
)
DEFAULT_ROUTERS = ("preble:e2", "preble:round_robin", "sglang:cache_aware", "vllm:cache_aware")


def select_workloads(names: Sequence[str], overrides: Sequence[tuple[str | None, str, Any]] = (),
                     rate: float | None = None, num_requests: int | None = None, rate_scale: float = 1.0,
                     preset: Sequence[WorkloadRun] = CPU_WORKLOADS) -> tuple[WorkloadRun, ...]:
    """Workloads of `preset` by name; `overrides` are (workload or None for all, key, value)
    parameters; `rate` and `num_requests` replace every preset's; `rate_scale` multiplies the
    rates (and the request counts, so that runs last as long)."""
    known = {w.name: w for w in preset}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out = []
    for w in (known[n] for n in names):
        params = {**w.params, **{k: v for target, k, v in overrides if target in (None, w.name)}}
        out.append(replace(w, params=params, rate=(rate or w.rate) * rate_scale,
                           num_requests=num_requests or round(w.num_requests * rate_scale)))
    return tuple(out)


@dataclass(frozen=True)
class Climb:
    """Where to compare: each workload's knee for one router, found as the grid finds it (the
    first rung of a rate ladder whose p99 latency passes `factor` times the lightest rung's),
    climbing from the workload's rate by `step` with `requests` requests a rung."""

    router: str = "preble:round_robin"
    requests: int = 100
    step: float = 1.5
    max_rungs: int = 6
    factor: float = 5.0


@dataclass(frozen=True)
class CorePlan:
    """The cores each worker runs on, and the rest (the routers and the load generator)."""

    workers: tuple[frozenset[int], ...]
    rest: frozenset[int]


def core_plan(cores: Sequence[int], workers: int, threads: int) -> CorePlan:
    """Worker i takes the i-th block of `threads` cores; the routers and the load generator share
    what is left, so that neither slows a worker down."""
    need = workers * threads
    if need >= len(cores):
        raise ValueError(f"{workers} workers x {threads} cores leave none of the {len(cores)} cores for the "
                         "routers and the load generator")
    ordered = sorted(cores)
    return CorePlan(tuple(frozenset(ordered[i * threads:(i + 1) * threads]) for i in range(workers)),
                    frozenset(ordered[need:]))


@dataclass(frozen=True)
class PeerBenchConfig:
    """One comparison: the workers (shared by every run), the routers, the workloads."""

    model: str | None = None  # HF folder; None: the demo model
    workers: int = 3
    routers: tuple[str, ...] = DEFAULT_ROUTERS
    workloads: tuple[WorkloadRun, ...] = CPU_WORKLOADS
    prefix_cap: int | None = 1024  # shared-prefix tokens kept per prompt; None: all
    max_output_tokens: int | None = 32
    worker_threads: int | None = None  # torch threads per worker; None: the cores shared out
    page_size: int = DEFAULT_PAGE_SIZE
    num_pages: int = 384  # KV pages per worker: 6,144 tokens, about half a workload's distinct prefixes
    max_num_batched_tokens: int = 512
    seed: int = 0
    sglang_router: str | None = None  # executables; None: $PREBLE_SGLANG_ROUTER, else PATH
    vllm_router: str | None = None
    worker_startup_s: float = 300.0
    router_startup_s: float = 120.0
    flush_attempts: int = 20  # a worker refuses to flush while requests still run
    poll_s: float = 0.5
    stop_grace_s: float = 15.0
    request_timeout_s: float = 600.0
    log_tail_chars: int = 3000
    log_dir: str | None = None  # keep the workers' and routers' logs here; None: a temporary folder
    cost_model: str | None = None  # e2's cost model for these workers (`preble profile` JSON); None: built-in
    health_timeout_s: float | None = None  # Preble router's health timeout; None: its default
    device: str = "cpu"  # the workers' device: several workers may share one GPU
    load_format: str = "auto"  # dummy: random weights for a folder without them (`preble random-folder`)
    repeats: int = 1  # runs of each router on each workload, arrivals drawn with seeds seed, seed + 1, ...
    pin_cores: bool = False  # each worker on cores of its own; routers and load generator on the rest
    router_cores: int = 4  # cores left to the routers and the load generator when pinning
    climb: Climb | None = None  # set each workload's rate at this router's knee first

    def cores(self) -> list[int]:
        return sorted(os.sched_getaffinity(0))

    def threads(self) -> int:
        if self.worker_threads:
            return self.worker_threads
        spare = len(self.cores()) - (self.router_cores if self.pin_cores else 0)
        return max(1, spare // self.workers)

    def core_plan(self) -> CorePlan | None:
        return core_plan(self.cores(), self.workers, self.threads()) if self.pin_cores else None

    def worker_args(self) -> list[str]:
        return ["--page-size", str(self.page_size), "--num-pages", str(self.num_pages),
                "--max-num-batched-tokens", str(self.max_num_batched_tokens), "--threads", str(self.threads()),
                "--device", self.device, "--load-format", self.load_format]

    def executable(self, kind: str) -> str | None:
        """The peer router's executable, or None when it cannot be found."""
        k = PEER_KINDS[kind]
        given = {"sglang": self.sglang_router, "vllm": self.vllm_router}[kind] or os.environ.get(k.env)
        path = given or shutil.which(k.executable)
        return path if path and os.access(path, os.X_OK) else None
