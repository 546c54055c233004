"""Global scheduling: the router's policies over a global prefix tree. Pure, clock-injected."""

from __future__ import annotations

from collections.abc import Callable

from ..cost_model import CostModel
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
from .e2 import E2Config, E2Policy

POLICIES: tuple[str, ...] = ("e2", "round_robin", "least_load", "power_of_two", "cache_aware",
                             "prefix_hash")

_CONFIGS = {"e2": E2Config, "cache_aware": CacheAwareConfig, "prefix_hash": PrefixHashConfig}


def make_policy(name: str, *, clock: Callable[[], float], cost_model: CostModel | None = None,
                config: object | None = None, seed: int = 0) -> RoutingPolicy:
    """Build a policy by name. `config` is that policy's config dataclass (None: defaults);
    `cost_model` is used by e2, `seed` by power_of_two."""
    if name not in POLICIES:
        raise ValueError(f"unknown routing policy {name!r}; choose one of: {', '.join(POLICIES)}")
    expected = _CONFIGS.get(name)
    if config is not None and (expected is None or not isinstance(config, expected)):
        want = expected.__name__ if expected else "no config"
        raise ValueError(f"policy {name!r} takes {want}, not {type(config).__name__}")
    if name == "e2":
        return E2Policy(clock, cost_model, config)
    if name == "cache_aware":
        return CacheAware(clock, config)
    if name == "prefix_hash":
        return PrefixHash(clock, config)
    if name == "power_of_two":
        return PowerOfTwo(clock, seed)
    return {"round_robin": RoundRobin, "least_load": LeastLoad}[name](clock)


__all__ = ["POLICIES", "make_policy", "RoutingPolicy", "E2Config", "E2Policy", "CacheAwareConfig",
           "PrefixHashConfig"]
