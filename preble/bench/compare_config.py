"""What the comparison runs: its policies, the variants of its studies, and `CompareConfig`
(sizes, loads, and the simulated cluster each point runs on). The command line reads its
defaults from here, so nothing heavy is imported (no torch, no web stack)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..core.pages import DEFAULT_PAGE_SIZE
from ..core.routing import DEFAULT_POLICY, default_config
from ..core.scheduler_config import SchedulerConfig
from ..sim.cluster import SimConfig
from .workloads.report import PREBLE_WORKLOADS

# the paper's comparison, and the router's default policy
POLICIES = ("round_robin", "least_load", "cache_aware", "prefix_hash", "e2", DEFAULT_POLICY)
METRICS = ("mean_latency", "p50_latency", "p99_latency", "mean_ttft", "p90_ttft", "p99_ttft", "mean_tpot",
           "throughput", "hit_ratio")


@dataclass(frozen=True)
class Variant:
    """One configuration of the cluster under test: a routing policy, changes to its default
    config, a local queue."""

    label: str
    policy: str
    local_policy: str = "preble"
    overrides: dict = field(default_factory=dict)  # fields of the policy's config


LOCAL_VARIANTS = tuple(Variant(f"e2 + {q}", "e2", q) for q in ("fcfs", "lpm", "preble"))
# The paper's ablation order: E2's exploit/explore alone, + rebalancing and replication,
# + prefill/decode balancing, + the priority-fair local queue (lpm, SGLang's, before it).
_OFF = dict(rebalance=False, replicate=False, pd_balance=False)
ABLATION_VARIANTS = (
    Variant("round_robin + lpm", "round_robin", "lpm"),
    Variant("E2 exploit/explore", "e2", "lpm", _OFF),
    Variant("+ rebalance/replicate", "e2", "lpm", dict(pd_balance=False)),
    Variant("+ P/D balancing", "e2", "lpm"),
    Variant("+ priority-fair queue", "e2", "preble"),
)


@dataclass(frozen=True)
class CompareConfig:
    workloads: tuple[str, ...] = PREBLE_WORKLOADS
    policies: tuple[str, ...] = POLICIES
    replicas: tuple[int, ...] = (2, 4, 8)
    cost_model: str = "results/cost_models/h100_llama3-8b.json"
    tokenizer: str | None = None  # HF folder for text workloads; None: the demo model's
    num_pages: int = 24_000  # KV pages per replica (an H100 80GB holds ~400k Llama-3-8B tokens)
    page_size: int = DEFAULT_PAGE_SIZE
    max_num_batched_tokens: int = 8192  # the local scheduler's token budget per step
    max_model_len: int = 32_768  # context window (Llama-3.1-8B's is longer; longer prompts are cut)
    duration_s: float = 120.0  # span of arrivals of each run
    min_requests: int = 300
    max_requests: int = 6000
    light_load: float = 0.15  # the first rate, as a fraction of the cluster's estimated capacity
    light_latency: float = 2.0  # ... halved until round_robin's mean latency is within this x unloaded
    max_halvings: int = 8
    rate_step: float = 1.5  # each rate is this times the last
    max_rates: int = 8
    saturation_factor: float = 5.0  # round_robin saturates when its p99 passes this x the first
    warmup_fraction: float = 0.2  # the first arrivals of a run, left out of its statistics (cold caches)
    scaling_replicas: tuple[int, ...] = (16, 32, 64)
    scaling_workloads: tuple[str, ...] = ("toolbench", "videoqa", "loogle")
    scaling_policies: tuple[str, ...] = ("round_robin", "least_load", "cache_aware", "e2", DEFAULT_POLICY)
    scaling_max_requests: int = 20_000
    study_replicas: int = 4  # replicas of the local-queue and ablation studies
    seed: int = 0
    jobs: int = 2  # worker processes

    def sim_config(self, replicas: int, variant: Variant) -> SimConfig:
        policy_config = None
        if variant.overrides:
            policy_config = replace(default_config(variant.policy, self.page_size, self.seed), **variant.overrides)
        return SimConfig(replicas=replicas, policy=variant.policy, policy_config=policy_config,
                         page_size=self.page_size, num_pages=self.num_pages, seed=self.seed,
                         scheduler=SchedulerConfig(max_num_batched_tokens=self.max_num_batched_tokens,
                                                   max_model_len=self.max_model_len,
                                                   local_policy=variant.local_policy))
