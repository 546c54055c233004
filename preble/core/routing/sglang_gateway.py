"""SGLang's model gateway `cache_aware` policy as of late 2026, as a peer policy.

Source. The Rust gateway left sgl-project/sglang (sgl-router, then sgl-model-gateway/) for its own
repository, smg-project/smg (formerly lightseekorg/smg, "Shepherd Model Gateway"); its current
cache_aware lives there. Read at these commits:
  model_gateway/src/policies/cache_aware.rs  56ad201813a222df0aca402ed6163ba737009d86  select_worker,
      select_worker_with_tokens, select_matched_candidate, gate_selected_candidate
  model_gateway/src/policies/mod.rs          56ad201813a222df0aca402ed6163ba737009d86  CacheAwareConfig
  model_gateway/src/main.rs                  56ad201813a222df0aca402ed6163ba737009d86  CLI defaults
  crates/kv_index/src/token_tree.rs, common.rs  23b2e5b77c42f6b0b22b4224c9ac9a61ea3d3d6e  token tree
The per-request gate and the choice among holders came with smg PR #2161 (merged 2026-08-16),
which dropped the fleet-wide rule (max - min > 64 and max > 1.5 x min) that `baselines.CacheAware`
keeps. The copy still under sgl-project/sglang's sgl-model-gateway/ has that older rule and no
gate (src/policies/cache_aware.rs at 053b63ff26df927535ada92bf15967f27637787a; defaults in
bindings/python/src/sglang_router/router_args.py at 6614f98405b9d58cf284fd1494dd9322e9d44f76:
0.3 / 64 / 1.5 / 60 s / 2^26).

The rule, per request, over the gateway's own count of in-flight requests per worker ("load": +1
when it dispatches, -1 when the response ends):
- Match the prompt's whole pages (`block_size` tokens) on the token tree of prompts routed so far.
  A hit needs matched / prompt tokens > `cache_threshold` (the prompt's full length, partial last
  page included, is the denominator).
- Hit: the holders are the workers listed on the deepest matched node (at most 8). The least
  loaded of them wins, a uniformly random one among equals. If its load exceeds both 1.5 x the
  fleet's mean load and the mean + 64, the request spills to the least loaded worker ("spill").
- Miss: the least loaded worker; equal loads go to the one that has been routed fewer requests,
  then to the one added first.
- The prompt's whole pages are then recorded for the chosen worker, so a spill makes the target a
  second holder of a hot prefix. Prompts shorter than a page are neither matched nor recorded.
Not modelled because off by default: the KV-usage triggers (--balance-token-usage-threshold and
--overload-token-usage-threshold, 1.0), overlap decay and selection temperature (0), the
event-driven and hash-index modes, and worker overload vetoes.

Deliberate deviations:
- Token ids, not characters. smg keeps a token tree for pre-tokenized (gRPC) requests and a
  character tree for HTTP text with the same rules; our router tokenises once, so we follow the
  token tree and its limits count tokens directly. (On the text path the same 2^26 limit counts
  characters, about 2^24 tokens at smg's own 4 characters per token.)
- The project's `ApproxTree` stands in for the token tree. Pages are enforced by recording and
  matching whole pages only; its nodes may split inside a page, which changes no match (only
  where eviction cuts). Holders are listed oldest first; smg lists a node's tenants in hash-map
  order.
- Eviction: smg keeps the whole tree under 2^26 tokens, dropping least recently used leaves
  across all workers every 120 s (--eviction-interval). `ApproxTree` caps each worker, at every
  insert; each worker gets an equal share of the budget, so the total stays under it.
- The draw among equally loaded holders is seeded (smg uses a thread RNG).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice

from ..kv_events import KVEvent, PagesStored
from ..messages import LoadReport
from .approx_tree import ApproxTree
from .base import Described, RequestDone, RouteDecision, RouteRequest


class SGLangGatewayBranch(StrEnum):
    """Which part of the gateway's rule chose the worker (module docstring)."""

    CACHE_HIT = "cache_hit"  # the least loaded holder of the match
    SPILL = "spill"  # a hit whose holder is overloaded: the least loaded worker
    CACHE_MISS = "cache_miss"  # no hit: the least loaded worker


@dataclass(frozen=True)
class SGLangGatewayConfig:
    cache_threshold: float = 0.3  # --cache-threshold: a hit needs matched / prompt tokens above this
    spill_rel_threshold: float = 1.5  # --balance-rel-threshold: spill when load > this x fleet mean ...
    spill_abs_threshold: int = 64  # --balance-abs-threshold: ... and load > fleet mean + this
    block_size: int = 16  # --block-size: the token tree's page; only whole pages are stored and matched
    max_tree_tokens: int = 1 << 26  # --max-tree-size (67108864): tokens the whole tree may hold
    holders_cap: int = 8  # kv_index MATCHED_TENANTS_CAP: holders of the matched node considered
    seed: int = 0  # not in smg (thread RNG): seeds the draw among equally loaded holders


class SGLangGateway(Described):
    """smg's cache_aware: the least loaded holder of the longest match unless it is far above the
    fleet's mean load, else the least loaded worker (module docstring)."""

    name = "sglang_gateway"

    def __init__(self, clock: Callable[[], float], config: SGLangGatewayConfig | None = None) -> None:
        self.clock = clock
        self.config = config or SGLangGatewayConfig()
        self.tree = ApproxTree(self.config.max_tree_tokens)
        self.rng = random.Random(self.config.seed)
        self.load: dict[str, int] = {}  # worker -> in-flight requests, in the order workers were added
        self.processed: dict[str, int] = {}  # worker -> requests ever routed to it (a tie-break)
        self._routed: dict[str, str] = {}  # in-flight request id -> its worker

    # ------------------------------------------------------------------ membership and feeds

    def add_worker(self, worker_id: str) -> None:
        if worker_id not in self.load:
            self.load[worker_id] = self.processed[worker_id] = 0
            self._share_budget()

    def remove_worker(self, worker_id: str) -> None:
        if worker_id in self.load:
            del self.load[worker_id], self.processed[worker_id]
            self._routed = {r: w for r, w in self._routed.items() if w != worker_id}
            self.tree.remove_worker(worker_id)
            self._share_budget()

    def _share_budget(self) -> None:
        """Each worker may hold an equal share of the tree-wide token budget."""
        self.tree.max_tokens = self.config.max_tree_tokens // max(1, len(self.load))

    def on_kv_event(self, worker_id: str, event: KVEvent) -> None:
        """The tree-mode gateway does not read workers' caches."""

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        """The tree-mode gateway does not read workers' caches."""

    def on_load(self, report: LoadReport) -> None:
        """Its load is its own in-flight count; backend reports only feed triggers off by default."""

    def on_done(self, done: RequestDone) -> None:
        worker = self._routed.pop(done.request_id, None)
        if worker is not None:
            self.load[worker] -= 1

    # ------------------------------------------------------------------ routing

    def route(self, req: RouteRequest) -> RouteDecision:
        if not self.load:
            raise RuntimeError("no workers to route to")
        cfg = self.config
        tokens = req.token_ids
        whole = tokens[:len(tokens) - len(tokens) % cfg.block_size]
        matched, holders = self.match(whole)
        least = min(self.load, key=lambda w: (self.load[w], self.processed[w]))
        if tokens and matched / len(tokens) > cfg.cache_threshold:
            pick = self._lightest(holders)
            worker, branch = (least, SGLangGatewayBranch.SPILL) if self._overloaded(pick) else \
                (pick, SGLangGatewayBranch.CACHE_HIT)
        else:
            worker, branch = least, SGLangGatewayBranch.CACHE_MISS
        costs = {w: float(self.load[w]) for w in holders}
        if whole:
            self.tree.insert(whole, worker, self.clock())
        if req.request_id not in self._routed:
            self._routed[req.request_id] = worker
            self.load[worker] += 1
        self.processed[worker] += 1
        return RouteDecision(worker, branch, matched if worker in holders else 0, costs)

    def match(self, whole: list[int]) -> tuple[int, tuple[str, ...]]:
        """Whole-page tokens of `whole` (a page-aligned prompt) recorded on the tree, and the
        workers listed on the node holding the last of them (at most `holders_cap`)."""
        pos, _ = self.tree.match(whole)
        matched = pos - pos % self.config.block_size
        if not matched:
            return 0, ()
        node, depth = self.tree.root, 0
        while depth < matched:  # every node up to `matched` lies on the prompt's path
            node = node.children[whole[depth]]
            depth += len(node.tokens)
        return matched, tuple(islice(node.tenants, self.config.holders_cap))

    def _lightest(self, holders: tuple[str, ...]) -> str:
        """The least loaded holder, in worker order; a random one of several equally loaded."""
        candidates = [w for w in self.load if w in holders]
        least = min(self.load[w] for w in candidates)
        tied = [w for w in candidates if self.load[w] == least]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)

    def _overloaded(self, worker: str) -> bool:
        """Above both margins over the fleet's mean load (smg's gate_selected_candidate)."""
        mean = sum(self.load.values()) / len(self.load)
        load = self.load[worker]
        return load > mean * self.config.spill_rel_threshold and load > mean + self.config.spill_abs_threshold
