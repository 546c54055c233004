"""Global scheduling: the router's policies, pure and clock-injected, and one factory for them.

A policy's config dataclass holds its every default; `make_policy` fills in the two things only
the caller knows, the workers' KV page size and a seed, for configs that have those fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from ..cost_model import CostModel
from ..pages import DEFAULT_PAGE_SIZE
from .base import RoutingPolicy
from .baselines import (
    CacheAware,
    CacheAwareConfig,
    LeastLoad,
    PowerOfTwo,
    PrefixHash,
    PrefixHashConfig,
    RoundRobin,
)
from .dynamo_kv import DynamoKV, DynamoKVConfig
from .e2 import E2Config, E2Policy
from .latency import LatencyConfig, LatencyPolicy
from .llm_d import LlmDConfig, LlmDPolicy
from .preble_paper import PreblePaperConfig, PreblePaperPolicy
from .sglang_gateway import SGLangGateway, SGLangGatewayConfig
from .sglang_slim import SGLangSlim, SGLangSlimConfig

DEFAULT_POLICY = "latency"

Clock = Callable[[], float]


@dataclass(frozen=True)
class PolicySpec:
    build: Callable[[Clock, CostModel | None, object | None, int], RoutingPolicy]  # (clock, cost, config, seed)
    config: type | None  # its config dataclass; None: it takes none
    summary: str  # one line for --help and docs


POLICY_SPECS: dict[str, PolicySpec] = {
    "latency": PolicySpec(lambda clock, cost, cfg, seed: LatencyPolicy(clock, cost, cfg), LatencyConfig,
                          "least predicted added latency: queue, prefill of what the worker lacks, decode, "
                          "interference, less a credit for copies of hot prefixes (default)"),
    "e2": PolicySpec(lambda clock, cost, cfg, seed: E2Policy(clock, cost, cfg), E2Config,
                     "Preble's E2: exploit/explore with windowed load, eviction cost, rebalancing"),
    "round_robin": PolicySpec(lambda clock, cost, cfg, seed: RoundRobin(clock), None, "each worker in turn"),
    "least_load": PolicySpec(lambda clock, cost, cfg, seed: LeastLoad(clock), None,
                             "fewest outstanding tokens"),
    "power_of_two": PolicySpec(lambda clock, cost, cfg, seed: PowerOfTwo(clock, seed), None,
                               "the less loaded of two random workers"),
    "cache_aware": PolicySpec(lambda clock, cost, cfg, seed: CacheAware(clock, cfg), CacheAwareConfig,
                              "SGLang router's older cache_aware (fleet-wide imbalance switch)"),
    "prefix_hash": PolicySpec(lambda clock, cost, cfg, seed: PrefixHash(clock, cfg), PrefixHashConfig,
                              "consistent hash of the first tokens"),
    "sglang_gateway": PolicySpec(lambda clock, cost, cfg, seed: SGLangGateway(clock, cfg), SGLangGatewayConfig,
                                 "SGLang model gateway's cache_aware with its per-request spill gate"),
    "sglang_slim": PolicySpec(lambda clock, cost, cfg, seed: SGLangSlim(clock, cfg), SGLangSlimConfig,
                              "SGLang router's KV-event cache_aware rule"),
    "dynamo_kv": PolicySpec(lambda clock, cost, cfg, seed: DynamoKV(clock, cfg), DynamoKVConfig,
                            "NVIDIA Dynamo's KV router: overlap-weighted prefill blocks + decode blocks"),
    "llm_d": PolicySpec(lambda clock, cost, cfg, seed: LlmDPolicy(clock, cfg), LlmDConfig,
                        "llm-d: precise prefix-cache, queue and KV-utilisation scorers (3/2/2)"),
    "preble_paper": PolicySpec(lambda clock, cost, cfg, seed: PreblePaperPolicy(clock, cfg), PreblePaperConfig,
                               "the Preble paper's E2 as its code was released (virtual LRU, Mistral-7B/A6000 fit)"),
}
POLICIES: tuple[str, ...] = tuple(POLICY_SPECS)


def reads_caches(name: str) -> bool:
    """Whether the policy mirrors the workers' caches (and so needs their page size)."""
    spec = POLICY_SPECS.get(name)
    return spec is not None and spec.config is not None and "page_size" in {f.name for f in fields(spec.config)}


def default_config(name: str, page_size: int = DEFAULT_PAGE_SIZE, seed: int = 0) -> object | None:
    """The policy's config with its defaults, for workers of this page size (None: it takes none)."""
    spec = _spec(name)
    if spec.config is None:
        return None
    names = {f.name for f in fields(spec.config)}
    return spec.config(**{k: v for k, v in (("page_size", page_size), ("seed", seed)) if k in names})


def make_policy(name: str, *, clock: Clock, page_size: int = DEFAULT_PAGE_SIZE, cost_model: CostModel | None = None,
                config: object | None = None, seed: int = 0) -> RoutingPolicy:
    """Build a policy by name. `config` is that policy's config dataclass (None: its defaults with
    this `page_size` and `seed`); a config of another page size than the workers' is refused."""
    spec = _spec(name)
    if config is None:
        config = default_config(name, page_size, seed)
    elif spec.config is None or not isinstance(config, spec.config):
        want = spec.config.__name__ if spec.config else "no config"
        raise ValueError(f"policy {name!r} takes {want}, not {type(config).__name__}")
    elif getattr(config, "page_size", page_size) != page_size:
        raise ValueError(f"the {name} config's page size {config.page_size} is not the workers' {page_size}")
    return spec.build(clock, cost_model, config, seed)


def _spec(name: str) -> PolicySpec:
    spec = POLICY_SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown routing policy {name!r}; choose one of: {', '.join(POLICIES)}")
    return spec


__all__ = ["DEFAULT_PAGE_SIZE", "DEFAULT_POLICY", "POLICIES", "POLICY_SPECS", "default_config", "make_policy", "reads_caches",
           "RoutingPolicy", "E2Config", "E2Policy", "LatencyConfig", "LatencyPolicy", "CacheAwareConfig",
           "PrefixHashConfig"]
