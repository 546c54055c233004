"""The simulated cluster: replicas running the real scheduler and cache, a real routing policy,
and a simulated clock driven by a discrete-event loop.

Events, in time order (ties: step ends, then arrivals, then load reports):

- a replica's step ends: `Scheduler.update` with fake sampled tokens (one fixed id; requests run
  with `ignore_eos`, so only `max_tokens` or the context window ends them); finished requests
  are recorded and reported to the policy with `on_done`;
- a request arrives: the policy routes it (`route`) and its replica's scheduler queues it;
- every `load_report_interval_s`: each replica's `LoadReport` goes to the policy's `on_load`.

After all events of one instant are applied, every idle replica with work starts a step: it
calls `schedule()`, and the step ends after the cost model's time for that batch. KV events
reach the policy the moment the cache emits them (a live router gets them a few milliseconds
later, in batches).

Step time: prefill chunks cost `prefill_time(chunk tokens, tokens before the chunk)` each;
the decodes together cost `decode_step_time(decodes, their total context)`, where a decode's
context is every token whose KV it attends to, the new one included. A mixed step costs the
sum of the two by default (`mixed_step="sum"`: conservative, the fixed costs `a` and `d` are
both paid) or their maximum (`"max"`: an optimistic bound for a fused pass). A one-token chunk
that samples a request's next output token is a decode; any other chunk is a prefill.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from ..core.cost_model import CostModel, Interconnect
from ..core.load_report import STATS_WINDOW_S, RequestWindow, build_load_report
from ..core.messages import LoadReport
from ..core.pages import DEFAULT_PAGE_SIZE, PageAllocator
from ..core.radix_cache import RadixCache
from ..core.request import Request
from ..core.routing import DEFAULT_POLICY, make_policy
from ..core.routing.base import RequestDone, RouteRequest, RoutingPolicy
from ..core.sampling_params import SamplingParams
from ..core.scheduler import Scheduler, SchedulerOutput
from ..core.scheduler_config import SchedulerConfig
from ..core.step_stats import StepMeter, split_pass


class SimRequestLike(Protocol):
    """What the simulator needs of a request (the workload generators' objects have these)."""

    request_id: str
    arrival: float  # seconds
    prompt_token_ids: Sequence[int]
    max_tokens: int


@dataclass(frozen=True)
class SimRequest:
    request_id: str
    arrival: float  # seconds
    prompt_token_ids: Sequence[int]
    max_tokens: int


@dataclass(frozen=True)
class SimConfig:
    replicas: int = 4
    policy: str = DEFAULT_POLICY  # a name of preble.core.routing.POLICIES
    policy_config: object | None = None  # that policy's config; None: its defaults for this page size
    page_size: int = DEFAULT_PAGE_SIZE  # tokens per KV page
    num_pages: int = 16384  # KV capacity of one GPU, in pages
    tensor_parallel: int = 1  # GPUs per replica: the replica's KV capacity and compute grow with them
    interconnect: Interconnect = Interconnect()  # what the replica's all-reduces cost
    scheduler: SchedulerConfig = SchedulerConfig()  # every replica's local scheduler
    load_report_interval_s: float = 0.5  # how often each replica sends the policy a LoadReport
    stats_window_s: float = STATS_WINDOW_S  # window of the hit ratio and TPOT in load reports (the worker's)
    mixed_step: str = "sum"  # a step with prefill and decode costs their sum | max
    sampled_token_id: int = 1  # the token every step "samples"
    seed: int = 0  # for randomised policies (power_of_two)
    cost_model: CostModel | None = None  # None: CostModel() defaults

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.tensor_parallel < 1:
            raise ValueError("replicas and tensor_parallel must be at least 1")
        if self.load_report_interval_s <= 0 or self.stats_window_s <= 0:
            raise ValueError("load_report_interval_s and stats_window_s must be positive")
        if self.mixed_step not in ("sum", "max"):
            raise ValueError(f"mixed_step must be 'sum' or 'max', not {self.mixed_step!r}")


@dataclass(slots=True)
class SimRecord:
    """One finished request; the same fields the live load generator records."""

    request_id: str
    arrival: float
    first_token_time: float
    finish_time: float
    ttft: float  # first_token_time - arrival
    tpot: float  # seconds per output token after the first; 0.0 for a single output token
    latency: float  # finish_time - arrival
    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the replica's cache at first admission
    output_tokens: int
    worker: str
    branch: str  # the policy's reason for the worker (RouteDecision.branch)
    preemptions: int = 0


class _SameToken(dict):
    """A sampled-token map that answers the same id for every request (no dict per step)."""

    def __init__(self, token: int) -> None:
        super().__init__()
        self.token = token

    def __missing__(self, key: Request) -> int:
        return self.token


class SimReplica:
    """One simulated worker: page allocator, radix cache (its events go to the policy) and
    local scheduler, all from preble.core and all on the simulated clock."""

    def __init__(self, index: int, config: SimConfig, clock: Callable[[], float],
                 policy: RoutingPolicy) -> None:
        self.index = index
        self.id = worker_id = f"w{index}"
        self.allocator = PageAllocator(config.num_pages * config.tensor_parallel, config.page_size)
        self.cache = RadixCache(self.allocator, clock, partial(policy.on_kv_event, worker_id))
        self.scheduler = Scheduler(config.scheduler, self.allocator, self.cache, clock)
        self.stats = RequestWindow(config.stats_window_s, clock)
        self.meter = StepMeter()
        self.step: SchedulerOutput | None = None  # the step in flight; None: idle
        self.num_steps = 0
        self.busy_s = 0.0  # simulated seconds spent in steps

    def load_report(self, now: float) -> LoadReport:
        return build_load_report(self.id, now, self.scheduler, self.stats, self.meter.totals)


def step_time(out: SchedulerOutput, cost: CostModel, mixed: str = "sum") -> float:
    """Simulated seconds of the forward pass `out` describes (module docstring: the rules)."""
    prefills, decodes, context = split_pass(out)
    prefill = sum(cost.prefill_time(n, start) for n, start in prefills)
    decode = cost.decode_step_time(decodes, context)
    return prefill + decode if mixed == "sum" else max(prefill, decode)


class SimCluster:
    """N replicas behind one policy. `run()` plays a workload to the end and returns its records
    (in the workload's order); the replicas and the policy stay inspectable afterwards."""

    def __init__(self, config: SimConfig, cost_model: CostModel | None = None) -> None:
        self.config = config
        # The policy and the replicas both see the cost of a whole (possibly multi-GPU) replica.
        self.cost = (cost_model or config.cost_model or CostModel()).tensor_parallel(config.tensor_parallel,
                                                                                     config.interconnect)
        self.now = 0.0
        clock = self.clock
        self.policy = make_policy(config.policy, clock=clock, page_size=config.page_size, cost_model=self.cost,
                                  config=config.policy_config, seed=config.seed)
        self.replicas = [SimReplica(i, config, clock, self.policy)
                         for i in range(config.replicas)]
        self._by_id = {r.id: r for r in self.replicas}
        for r in self.replicas:
            self.policy.add_worker(r.id)
        self.num_routed = 0

    def clock(self) -> float:
        return self.now

    def run(self, requests: Iterable[SimRequestLike]) -> list[SimRecord]:
        reqs = list(requests)
        self._validate(reqs)
        order = sorted(range(len(reqs)), key=lambda k: reqs[k].arrival)
        n = len(reqs)
        records: dict[str, SimRecord] = {}
        if not n:
            return []
        cfg, policy = self.config, self.policy
        sampled = _SameToken(cfg.sampled_token_id)
        meta: dict[Request, tuple[SimReplica, str]] = {}
        heap: list[tuple[float, int, int]] = []  # (end time, seq, replica index) of steps in flight
        seq = 0
        t0 = reqs[order[0]].arrival
        self.now = t0
        interval = cfg.load_report_interval_s
        reports = 0  # load reports happen at t0 + k * interval
        next_report = t0
        i = 0
        inf = math.inf
        while len(records) < n:
            t = min(heap[0][0] if heap else inf, reqs[order[i]].arrival if i < n else inf,
                    next_report)
            if not heap and i == n:
                raise RuntimeError(f"simulation stalled at t={t}: {n - len(records)} requests "
                                   "unfinished and no replica busy")
            self.now = t
            woken: list[int] = []
            while heap and heap[0][0] <= t:
                _, _, k = heapq.heappop(heap)
                rep = self.replicas[k]
                out, rep.step = rep.step, None
                for req in rep.scheduler.update(out, sampled):
                    records[req.request_id] = self._finish(req, *meta.pop(req))
                woken.append(k)
            while i < n and reqs[order[i]].arrival <= t:
                src = reqs[order[i]]
                i += 1
                prompt = list(src.prompt_token_ids)
                decision = policy.route(RouteRequest(src.request_id, prompt, src.max_tokens))
                rep = self._by_id[decision.worker_id]
                req = Request(src.request_id, prompt,
                              SamplingParams(max_tokens=src.max_tokens, ignore_eos=True),
                              src.arrival)
                meta[req] = (rep, decision.branch)
                rep.scheduler.add_request(req)
                self.num_routed += 1
                woken.append(rep.index)
            if next_report <= t:
                for rep in self.replicas:
                    policy.on_load(rep.load_report(t))
                reports += 1
                next_report = t0 + reports * interval
            for k in woken:
                rep = self.replicas[k]
                if rep.step is None and rep.scheduler.has_work:
                    dur = self._start_step(rep)
                    seq += 1
                    heapq.heappush(heap, (t + dur, seq, k))
        return [records[r.request_id] for r in reqs]

    def _validate(self, reqs: list[SimRequestLike]) -> None:
        ids = set()
        limit = self.replicas[0].scheduler.max_model_len
        for r in reqs:
            if r.request_id in ids:
                raise ValueError(f"duplicate request id {r.request_id!r}")
            ids.add(r.request_id)
            if not 0 < len(r.prompt_token_ids) < limit:
                raise ValueError(f"request {r.request_id!r}: prompt of {len(r.prompt_token_ids)} "
                                 f"tokens; a replica takes 1 to {limit - 1}")
            if r.max_tokens < 1:
                raise ValueError(f"request {r.request_id!r}: max_tokens must be positive")
            if not math.isfinite(r.arrival):
                raise ValueError(f"request {r.request_id!r}: arrival must be finite")

    def _start_step(self, rep: SimReplica) -> float:
        out = rep.scheduler.schedule()
        if out.is_empty and out.preempted:  # every decode was preempted: admit afresh
            out = rep.scheduler.schedule()
        if out.is_empty:
            raise RuntimeError(f"replica {rep.id} has work but scheduled nothing at t={self.now}")
        rep.step = out
        rep.num_steps += 1
        dur = step_time(out, self.cost, self.config.mixed_step)
        rep.busy_s += dur
        rep.meter.record(out, dur)
        return dur

    def _finish(self, req: Request, rep: SimReplica, branch: str) -> SimRecord:
        first, end = req.first_token_time, req.finish_time
        outputs, prompt = len(req.output_token_ids), len(req.prompt_token_ids)
        cached = req.num_cached_tokens or 0
        ttft, latency = first - req.arrival_time, end - req.arrival_time
        rep.stats.record(req)
        self.policy.on_done(RequestDone(req.request_id, rep.id, prompt, cached, outputs, ttft,
                                        latency))
        return SimRecord(req.request_id, req.arrival_time, first, end, ttft,
                         (end - first) / (outputs - 1) if outputs > 1 else 0.0, latency,
                         prompt, cached, outputs, rep.id, branch, req.num_preemptions)


def simulate(requests: Iterable[SimRequestLike], config: SimConfig = SimConfig(),
             cost_model: CostModel | None = None) -> list[SimRecord]:
    """Play `requests` on a fresh cluster; one record per request, in the workload's order.
    `cost_model` overrides `config.cost_model` (default: `CostModel()`)."""
    return SimCluster(config, cost_model).run(requests)
