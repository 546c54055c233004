"""The Preble paper's E2 global scheduler as its authors released it, for comparison with `e2`.

Source: WukLab/preble (arXiv 2407.00023), the release's `preble/` package: `preble/server/server.py`
(commit 1a35eae2) routes with `GlobalSchedulerWithTime(num_nodes, enable_eviction=True)` of
`preble/global_scheduler_with_time.py`, over `preble/global_lru_cache.py` (LPRadixCache) and
`ttft_overload_detector.py`, pricing prefills with `LP_mistral_7b_A6000_sglang_extend_flashinfer`
of `preble/benchmarks/exp_configs/model_equations.py` (commit bdc9135b); the hit ratios come from
their benchmark harness, `multi_node/model_runtime_manager.py`. WukLab's `preble/` copies of the
scheduler, cache and detector are not in our index: they were read in forks that carry the
release (lihuahua123/jointserve 711d13b6, puguo/preble 8342c18b, inakineitor/preble 3e58cbef),
which agree with each other and with WukLab's `multi_node/` originals of the same files
(`ttft_overload_detector.py` d5277435) except that those lack the chain-length gate.

What it does, per request (token ids; the tree records what was routed, never what workers hold):

- Insert the prompt into a radix tree. Its end node (the "leaf") exploits when its own tokens
  are fewer than the tokens before it: it goes to the GPUs allocated to the nearest node on its
  path that has any (all GPUs if none), the cheapest of them if several. Otherwise it explores:
  to the GPU with the highest windowed hit ratio if that reaches 0.7 ("pd"), else to the
  cheapest GPU.
- Cost = load + eviction. A GPU's load sums, over the window's "important" nodes allocated to
  it (the deepest node of a prompt whose tokens outnumber those before it), miss rate x
  requests x prefill time of the node / its GPU count, plus running requests through the node
  on that GPU x the node's last output budget x the GPU's median TPOT. The eviction cost
  replays the virtual LRU: it evicts as many tokens as the leaf holds from the GPU's
  recorded nodes, ordered by running-request vector then recency, and charges each evicted
  important-sized node miss rate x requests x its prefill time.
- Record: the path gets the GPU in its allocation and counts as cached there (a GPU over 198,516
  tokens evicts, in the same order, nodes it runs nothing through), and the important node gets
  the request in its 3-minute window. Once 50 requests per GPU have been routed, the heaviest
  GPU (counting nodes with 2+ windowed requests) at 1.5x the lightest hands it its cheapest
  nodes (whole subtrees) until balanced, or, if only one node is eligible, shares it when its
  TTFT on the heavy GPU doubled between the window's halves; the next heaviest follows, and so
  on. Prompts ending 3 or more nodes below their important node skip this.

Deliberate deviations, each kept from changing decisions where it can:

- Tokens: the tree is over the router's token ids, as theirs is (their router tokenises once,
  then sends the text, which each backend tokenises again; this project sends the ids).
- Time: the injected clock replaces datetime.now(); LRU recency is the order of touches (their
  time.time() stamps order the same way, one walk's nodes root first).
- Feedback: `RequestDone` replaces their RequestFuncOutput (TPOT = (latency - TTFT) / max(1,
  outputs), as their server computes it); `LoadReport.hit_ratio` replaces polling each runtime's
  windowed prefix hit ratio every 0.5 s. Their server passes no hit ratios (a TODO), their
  benchmark harness, which produced the paper's numbers, does: `pd_balance` is on. KV events are
  ignored, as the release has no such feed.
- Replica ids: the release's GPU ids are the live workers in the order added. Where it prices a
  subset of GPUs it routes to the GPU whose id is the position of the cheapest in that subset
  (their `int(np.argmin(costs))` over a set, iterated in increasing id as CPython does for
  small ints): kept, as that is how it routes; `subset_index_as_replica=False` fixes it.
- Costs: their fitted prefill formula with their coefficients (`PrefillFit`, one GPU and model,
  as released) rather than the project's `CostModel`: it is fully expressible. Load sums are
  kept exactly (integers of 2**-1074), so they do not depend on the order of updates; theirs
  add floats in dict order, which can differ in the last bit.
- Speed: per-GPU sums, LRU lists and candidate lists kept up to date as the tree changes replace
  their scans of every node per decision; a move re-prices the windowed nodes below it at once
  and reaches the others when a prompt next walks through them; TTFT halves come from running
  sums. The results are the same (TTFT means, like loads, exactly rounded).
- Memory: their tree never frees a node. Here a leaf goes once no GPU holds it in the virtual
  LRU, no request runs through it and the window no longer names it, so the tree stays within
  the GPUs' capacities plus the window (with eviction on, as their server runs). Only prompts
  through such forgotten prefixes route differently: as if never seen, where the release would
  follow the stale allocation to a GPU that, by its own account, no longer holds them.
- Crashes dropped: a finished request whose prefix left the window (their breakpoint()), an
  empty prompt (no important node: explored, not recorded), a failed request's missing TPOT
  (theirs appends None and the median then fails: skipped). Their decode-length bookkeeping,
  which no decision reads, is left out; their nodes' observed output lengths are never filled
  in (the append is commented out), so the decode term uses the last output budget.
- Workers may be removed (the release has a fixed GPU list): everything about one is dropped.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, insort
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush, merge
from itertools import count

from ..kv_events import KVEvent, PagesStored
from ..messages import LoadReport
from .base import Described, RequestDone, RouteDecision, RouteRequest, WorkerInfo
from .e2 import E2Branch  # the paper's branches: exploit, explore, pd

_EXP = 1074  # every finite double is a whole number of 2**-1074
_ONE = 1 << _EXP
_MS = 1e3  # their fit is in milliseconds
_ROOT_KEY = (math.inf,)  # the root has the most running requests of all (theirs counts every routed one)


def _exact(x: float) -> int:
    """x as a whole number of 2**-1074, so that sums of such are exact in any order."""
    num, den = x.as_integer_ratio()
    return num << (_EXP + 1 - den.bit_length())


@dataclass(frozen=True)
class PrefillFit:
    """Their prefill time of `new` tokens whose node ends at token `context`, fitted for Mistral-7B
    on an A6000 under SGLang with FlashInfer (LP_mistral_7b_A6000_sglang_extend_flashinfer, a
    single request): a matmul term piecewise in `new`, an attention term in `context` and, for
    long extends, a term in new x context; the sum over an efficiency. Milliseconds."""

    big_from: int = 384  # mistral_7b_A6000_sglang_linear: n >= 384 ...
    big_slope_ms: float = 0.10842571  # ... 0.10842571 * n
    big_base_ms: float = 4.209777054806409  # ... + 4.2098
    mid_from: int = 192  # 192 <= n < 384 (negative near 384, as fitted): ...
    mid_base_ms: float = -118.0  # ... -118 ...
    mid_slope_ms: float = 1.25  # ... + 1.25 n ...
    mid_square_ms: float = 2.56e-3  # ... - 2.56e-3 n^2
    small_ms: float = 22.0  # n < 192: 22
    attn_short_max: int = 1024  # mistral_7b_A6000_sglang_attention: context <= 1024 ...
    attn_short_ms: float = 0.32  # ... costs 0.32
    attn_slope_ms: float = 1.86e-4  # else 1.86e-4 * context ...
    attn_base_ms: float = 0.159  # ... + 0.159 ...
    attn_halve_new: int = 1024  # ... halved when n <= 1024 ...
    attn_halve_kv: int = 32 * 256 * 2048  # ... and n <= 32 * 256 * 2048
    quad_from: int = 1024 * 1024  # extend_flashinfer: n * context > 1024 * 1024 adds ...
    quad_new_ms: float = 1.13e-3  # ... 1.13e-3 n
    quad_ctx_ms: float = 1.75e-3  # ... + 1.75e-3 context
    quad_pair_ms: float = 2.19e-6  # ... + 2.19e-6 n context
    efficiency: float = 0.9  # the sum is divided by 0.9

    def seconds(self, new: int, context: int) -> float:
        """In their order of operations, so that the floats match theirs."""
        if new >= self.big_from:
            linear = self.big_slope_ms * new + self.big_base_ms
        elif new >= self.mid_from:
            linear = self.mid_base_ms + self.mid_slope_ms * new - self.mid_square_ms * new ** 2
        else:
            linear = self.small_ms
        if context <= self.attn_short_max:
            attn = self.attn_short_ms
        else:
            attn = self.attn_slope_ms * context + self.attn_base_ms
            if new <= self.attn_halve_new and new <= self.attn_halve_kv:
                attn /= 2
        quad = 0.0
        if new * context > self.quad_from:
            quad = self.quad_new_ms * new + self.quad_ctx_ms * context + self.quad_pair_ms * new * context
        return (linear / _MS + attn / _MS + quad / _MS) / self.efficiency


@dataclass(frozen=True)
class PreblePaperConfig:
    """The release's constants; the switches restore what its callers set."""

    window_s: float = 180.0  # SlidingWindowHistogram(window_duration=timedelta(minutes=3))
    ttft_window_s: float = 180.0  # TTFTWindowedOverloadedDetector(window_duration=timedelta(minutes=3))
    capacity_tokens: int = 198_516  # max_tokens_gpu: the virtual LRU's tokens per GPU
    eviction: bool = True  # enable_eviction=True, as preble/server/server.py builds it
    rebalancing: bool = True  # enable_rebalancing=True (the class default)
    high_load_ratio: float = 1.5  # HIGH_LOAD_THRESHOLD
    rebalance_after_per_gpu: int = 50  # no rebalancing before 50 * num_gpus requests were routed
    rebalance_min_requests: int = 2  # nodes with fewer windowed requests neither weigh nor move (min_load=2)
    chain_length: int = 3  # REBALANCING_CHAIN_LENGTH: rebalance only when leaf depth - important depth < 3
    overload_ratio: float = 2.0  # is_node_overloaded: newer half-window mean TTFT >= 2x the older half's
    tpot_initial_s: float = 0.15  # avg_topt_per_gpu seeded with .15
    tpot_samples: int = 200  # deque(maxlen=200): the median is over the last 200 TPOTs
    unseen_miss_rate: float = 1.0  # get_eviction_prefill_cost: prev_mis_rates.get(node, 1.0)
    pd_balance: bool = True  # runtime_id_with_highest_hit_rate, as their benchmark harness passes it
    pd_hit_ratio: float = 0.7  # ... the GPU with the highest hit ratio, if it is at least 0.7
    subset_index_as_replica: bool = True  # calculate_min_load_cost returns an index into the subset
    prefill: PrefillFit = field(default_factory=PrefillFit)  # LP_mistral_7b_A6000_sglang_extend_flashinfer


class _Stat:
    """A windowed important node (their histogram entry) and what it last added to the sums of
    each GPU it is allocated to, so that it can be taken back out exactly."""

    __slots__ = ("uid", "node", "count", "hit", "prompt", "miss", "out", "reg")

    def __init__(self, uid: int, node: _Node) -> None:
        self.uid = uid
        self.node = node
        self.count = 0  # node_to_count
        self.hit = 0  # hit_tokens: tokens before each prompt's end node
        self.prompt = 0  # prompt_tokens
        self.miss = 1.0  # prev_mis_rates: 1 - hit / prompt, updated when a request is recorded
        self.out = 0  # decoding_size: the last recorded request's output budget
        self.reg: _Reg | None = None


@dataclass(slots=True)
class _Reg:
    fixed: int  # exact prefill cost
    cost: float  # the same, as their float
    decode: dict[int, int]  # slot allocated -> running requests x output budget
    two: bool  # at least rebalance_min_requests: in the rebalancing sums
    movable: bool  # ... and large: a rebalancing candidate


@dataclass(frozen=True, slots=True)
class _Override:
    version: int
    slots: frozenset[int]


def _later(a: _Override | None, b: _Override | None) -> _Override | None:
    return b if a is None or (b is not None and b.version > a.version) else a


class _Node:
    """A node of the scheduler's prefix tree."""

    __slots__ = ("parent", "children", "tokens", "end", "depth", "seq", "refs", "active", "vec",
                 "cached", "kids", "alloc", "aver", "sub", "stat", "below", "entries", "pt")

    def __init__(self, parent: _Node | None, tokens: array, end: int, depth: int, seq: int,
                 version: int) -> None:
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.tokens = tokens
        self.end = end  # context_length: tokens from the root to this node's end
        self.depth = depth  # as the release stores it (see _insert)
        self.seq = seq  # when last touched: their last_access_time
        self.refs: dict[int, int] = {}  # slot -> running requests through the node (ref_counter)
        self.active = 0  # sum of refs
        self.vec: tuple | None = ()  # refs as a vector over slots without trailing zeros; None: stale
        self.cached: set[int] = set()  # slots that hold it in the virtual LRU (cached, not evicted)
        self.kids: dict[int, int] = {}  # slot -> children it holds
        self.alloc: set[int] = set()  # gpu_allocations, as of `aver` (see _fresh)
        self.aver = version  # the last allocation change reflected in `alloc`
        self.sub: _Override | None = None  # an allocation every node below it took (update_children)
        self.stat: _Stat | None = None
        self.below = 0  # windowed nodes in its subtree, itself included
        self.entries = 0  # window entries that end at this node
        self.pt: float | None = None  # its prefill time, once computed

    def __lt__(self, other: _Node) -> bool:
        """Their TreeNode order: the running-request vector compared as a list, then recency."""
        a, b = self.key(), other.key()
        if a == b:
            return self.seq < other.seq
        return a < b

    def key(self) -> tuple:
        if self.vec is None:
            refs = self.refs
            self.vec = tuple(refs.get(s, 0) for s in range(max(refs) + 1)) if refs else ()
        return self.vec

    def large(self) -> bool:
        """More of its own tokens than tokens before it: their is_large_node."""
        n = len(self.tokens)
        return n > self.end - n


def _common(seg: array, q: array, pos: int) -> int:
    """Length of the common prefix of `seg` and q[pos:]."""
    hi = min(len(seg), len(q) - pos)
    if q[pos:pos + hi] == seg[:hi]:
        return hi
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if q[pos:pos + mid] == seg[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _Ttfts:
    """One (node, GPU)'s TTFT samples in arrival order (their deque of (time, TTFT)), with exact
    running sums so that either half of the window is summed in O(log n)."""

    __slots__ = ("times", "sums", "start")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.sums: list[int] = [0]  # sums[k]: exact sum of the first k samples
        self.start = 0  # samples before it were purged

    def add(self, now: float, ttft: float, horizon: float) -> None:
        """Append, then drop the samples older than `horizon` (their add_data_point)."""
        self.times.append(now)
        self.sums.append(self.sums[-1] + _exact(ttft))
        while self.start < len(self.times) and self.times[self.start] < horizon:
            self.start += 1
        if self.start > len(self.times) // 2:
            del self.times[:self.start], self.sums[:self.start]
            self.start = 0

    def halves(self, cutoff: float) -> tuple[int, float, int, float]:
        """(count, mean) of the samples before `cutoff` and of the rest."""
        i, n = bisect_left(self.times, cutoff, self.start), len(self.times)
        old, new = i - self.start, n - i
        return (old, (self.sums[i] - self.sums[self.start]) / _ONE / old if old else 0.0,
                new, (self.sums[n] - self.sums[i]) / _ONE / new if new else 0.0)


@dataclass(eq=False)
class _Worker:
    id: str
    slot: int  # stable index of its per-node state
    tpots: deque  # its last TPOTs (avg_topt_per_gpu)
    ordered: list[float]  # the same, sorted
    tpot: float  # their median
    routed: int = 0  # per_gpu_load
    hit_ratio: float = 0.0  # from its last LoadReport
    allocated: int = 0  # tokens it holds in the virtual LRU (allocated_size)
    idle: OrderedDict = field(default_factory=OrderedDict)  # held nodes nobody runs through, least recent first
    busy: set = field(default_factory=set)  # held nodes with running requests (any GPU's)
    p_all: int = 0  # exact sum of the prefill costs of its windowed nodes
    d_all: int = 0  # sum of running requests x output budget over them
    p_two: int = 0  # the same over nodes with rebalance_min_requests or more
    d_two: int = 0
    cands: list = field(default_factory=list)  # (prefill cost, uid, stat) of movable nodes it runs nothing through
    cands_busy: dict = field(default_factory=dict)  # uid -> stat of movable nodes it runs requests through


class PreblePaperPolicy(Described):
    """GlobalSchedulerWithTime over the live workers, in the order added (their GPU ids)."""

    name = "preble_paper"

    def __init__(self, clock: Callable[[], float], config: PreblePaperConfig | None = None) -> None:
        self.clock = clock
        self.config = config or PreblePaperConfig()
        self._seq = count()
        self._uids = count()
        self._version = 0  # allocation changes so far: orders a node's own allocation against moves above it
        self.root = _Node(None, array("q"), 0, 0, -1, 0)
        self.root.vec = _ROOT_KEY
        self._slots: list[_Worker | None] = []
        self._workers: dict[str, _Worker] = {}
        self._order: list[_Worker] = []  # live workers by slot: the release's GPU ids 0..n-1
        self._routed = 0  # sum of the live workers' per_gpu_load
        self._window: deque[tuple[float, _Stat, _Node]] = deque()  # (time, important node's stat, leaf)
        self._ttfts: dict[tuple[_Node, int], _Ttfts] = {}  # (node, slot) -> its TTFTs
        self._pending: dict[str, tuple[int, _Node]] = {}  # request -> (slot, leaf)

    # ------------------------------------------------------------------ membership and feeds

    def add_worker(self, worker_id: str) -> None:
        if worker_id in self._workers:
            return
        cfg = self.config
        w = _Worker(worker_id, len(self._slots), deque([cfg.tpot_initial_s], maxlen=cfg.tpot_samples),
                    [cfg.tpot_initial_s], cfg.tpot_initial_s)
        self._slots.append(w)
        self._workers[worker_id] = w
        self._order.append(w)

    def remove_worker(self, worker_id: str) -> None:
        w = self._workers.pop(worker_id, None)
        if w is None:
            return
        self._slots[w.slot] = None
        self._order.remove(w)
        self._routed -= w.routed
        self._pending = {r: p for r, p in self._pending.items() if p[0] != w.slot}
        self._ttfts = {k: v for k, v in self._ttfts.items() if k[1] != w.slot}
        self._rebuild(w.slot)

    def on_kv_event(self, worker_id: str, event: KVEvent) -> None:
        """The release reads no KV events: it tracks what it routed."""

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        """The release reads no KV events: it tracks what it routed."""

    def on_load(self, report: LoadReport) -> None:
        w = self._workers.get(report.worker_id)
        if w is not None:
            w.hit_ratio = report.hit_ratio

    # ------------------------------------------------------------------ routing

    def route(self, req: RouteRequest) -> RouteDecision:
        if not self._order:
            raise RuntimeError("no workers to route to")
        now = self.clock()
        leaf = self._insert(array("q", req.token_ids))
        important = self._important(leaf)
        slot, branch, costs = self._choose(leaf)
        w = self._slots[slot]
        matched = self._held(leaf, slot)
        self._commit(leaf, important, w, req.max_tokens, now)
        self._pending[req.request_id] = (slot, leaf)
        return RouteDecision(w.id, branch, matched, {self._slots[s].id: c for s, c in costs.items()})

    def _choose(self, leaf: _Node) -> tuple[int, E2Branch, dict[int, float]]:
        """Exploit, pd or explore: (slot, branch, cost of each GPU priced)."""
        n = len(leaf.tokens)
        if n < leaf.end - n:
            cands = self._allocated(leaf)
            if len(cands) == 1:
                return cands[0], E2Branch.EXPLOIT, {}
            pos, costs = self._cheapest(leaf, cands)
            gpu = self._order[pos].slot if self.config.subset_index_as_replica else cands[pos]
            return gpu, E2Branch.EXPLOIT, costs
        heavy = self._decode_heavy()
        if heavy is not None:
            return heavy, E2Branch.PD, {}
        slots = [w.slot for w in self._order]
        pos, costs = self._cheapest(leaf, slots)
        return slots[pos], E2Branch.EXPLORE, costs

    def _allocated(self, leaf: _Node) -> list[int]:
        """The allocation of the nearest node up from the leaf that has one (all GPUs if none)."""
        node = leaf
        while node is not None:
            if node.alloc:
                return sorted(node.alloc)
            node = node.parent
        return [w.slot for w in self._order]

    def _cheapest(self, leaf: _Node, slots: list[int]) -> tuple[int, dict[int, float]]:
        """Position in `slots` of the first least load (+ eviction) cost, and the costs."""
        costs = {}
        for s in slots:
            cost = self._load(self._slots[s])
            if self.config.eviction:
                cost += self._eviction(leaf, s)
            costs[s] = cost
        return min(range(len(slots)), key=lambda i: costs[slots[i]]), costs

    def _decode_heavy(self) -> int | None:
        """The GPU with the highest hit ratio (first of equals), if it reaches pd_hit_ratio."""
        if not self.config.pd_balance:
            return None
        best = max(self._order, key=lambda w: w.hit_ratio)
        return best.slot if best.hit_ratio >= self.config.pd_hit_ratio else None

    def _load(self, w: _Worker) -> float:
        return w.p_all / _ONE + w.tpot * w.d_all

    def _load_two(self, w: _Worker) -> float:
        return w.p_two / _ONE + w.tpot * w.d_two

    def _held(self, leaf: _Node, slot: int) -> int:
        node = leaf
        while node is not self.root:
            if slot in node.cached:
                return node.end
            node = node.parent
        return 0

    def worker_info(self, worker_id: str) -> WorkerInfo:
        return WorkerInfo(load_s=self.load_of(worker_id) if worker_id in self._workers else None)

    def load_of(self, worker_id: str) -> float:
        """A worker's load as the release prices it, in seconds (0 for unknown workers)."""
        w = self._workers.get(worker_id)
        return 0.0 if w is None else self._load(w)

    # ------------------------------------------------------------------ the tree

    def _insert(self, q: array) -> _Node:
        """Their LPRadixCache.insert: split where the prompt leaves a node, add its rest as a new
        leaf, touch each node entered. `depth` is theirs: one more per node entered, two more
        after a split, so a leaf below a split node is stored one deeper than it is."""
        node, pos, depth, above = self.root, 0, 0, None
        while pos < len(q):
            child = node.children.get(q[pos])
            if child is None:
                leaf = _Node(node, q[pos:], len(q), depth + 1, next(self._seq), self._version)
                node.children[q[pos]] = leaf
                return leaf
            self._fresh(child, above)
            k = _common(child.tokens, q, pos)
            if k == len(child.tokens):
                if pos + k == len(q):
                    return child  # they do not touch a node the prompt ends at exactly
                node, pos, depth = child, pos + k, depth + 1
                above = _later(above, child.sub)
            else:
                node, pos, depth = self._split(child, k), pos + k, depth + 2
            self._touch(node)
        return node

    def _fresh(self, node: _Node, above: _Override | None) -> None:
        """Apply to `node` the latest move of a node above it (`above`), if later than its own
        allocation: moves reach the nodes below lazily, as prompts walk down to them."""
        if above is not None and above.version > node.aver:
            node.alloc, node.aver = set(above.slots), above.version

    def _touch(self, node: _Node) -> None:
        node.seq = next(self._seq)
        if not node.active:
            for s in node.cached:
                self._slots[s].idle.move_to_end(node)

    def _split(self, child: _Node, k: int) -> _Node:
        """The first k tokens of `child` become a new node above it, with child's state copied."""
        parent = child.parent
        upper = _Node(parent, child.tokens[:k], parent.end + k, child.depth, next(self._seq), child.aver)
        child.tokens, child.pt = child.tokens[k:], None
        child.parent, child.depth = upper, upper.depth + 1
        upper.children[child.tokens[0]] = child
        parent.children[upper.tokens[0]] = upper
        upper.refs, upper.active, upper.vec = dict(child.refs), child.active, child.vec
        upper.cached, upper.alloc = set(child.cached), set(child.alloc)
        upper.kids = dict.fromkeys(child.cached, 1)
        upper.below = child.below
        for s in upper.cached:
            w = self._slots[s]
            if upper.active:
                w.busy.add(upper)
            else:
                w.idle[upper] = None  # the newest touch
        if upper.large() and not child.large():  # the window's entry moves up to the new node
            if child.stat is not None:
                upper.stat, child.stat = child.stat, None
                upper.stat.node = upper
                child.below -= 1
            for s in child.alloc:
                samples = self._ttfts.pop((child, s), None)
                if samples is not None:
                    self._ttfts[(upper, s)] = samples
        for stat in (child.stat, upper.stat):
            if stat is not None:
                self._refresh(stat)
        return upper

    def _important(self, leaf: _Node) -> _Node | None:
        """The nearest large node up from the leaf (None only for an empty prompt)."""
        node = leaf
        while node is not self.root:
            if node.large():
                return node
            node = node.parent
        return None

    # ------------------------------------------------------------------ recording a decision

    def _commit(self, leaf: _Node, important: _Node | None, w: _Worker, out: int, now: float) -> None:
        """Allocate the path to the GPU and hold it there, record the request in the window,
        evict what the GPU holds beyond its capacity, then rebalance."""
        cfg = self.config
        stats = []
        node = leaf
        while node is not self.root:
            node.alloc.add(w.slot)
            self._acquire(node, w)
            if node.stat is not None:
                stats.append(node.stat)
            node = node.parent
        self.root.alloc.add(w.slot)
        for stat in stats:
            self._refresh(stat)
        if important is not None:
            self._record(important, leaf, out, now)
        w.routed += 1
        self._routed += 1
        if cfg.eviction:
            self._evict(w)
        if cfg.rebalancing and important is not None and leaf.depth - important.depth < cfg.chain_length:
            self._rebalance()

    def _acquire(self, node: _Node, w: _Worker) -> None:
        """One more running request through `node` on `w`, which now holds it."""
        if not node.active:
            for s in node.cached:
                other = self._slots[s]
                del other.idle[node]
                other.busy.add(node)
        node.refs[w.slot] = node.refs.get(w.slot, 0) + 1
        node.active += 1
        node.vec = None
        if w.slot not in node.cached:
            node.cached.add(w.slot)
            node.parent.kids[w.slot] = node.parent.kids.get(w.slot, 0) + 1
            w.allocated += len(node.tokens)
            w.busy.add(node)

    def _record(self, important: _Node, leaf: _Node, out: int, now: float) -> None:
        """Their SlidingWindowHistogram.update: count the request, then expire old entries."""
        stat = important.stat
        if stat is None:
            stat = important.stat = _Stat(next(self._uids), important)
            self._count_below(important, 1)
        self._window.append((now, stat, leaf))
        leaf.entries += 1
        stat.count += 1
        stat.out = out
        stat.hit += leaf.end - len(leaf.tokens)
        stat.prompt += leaf.end
        stat.miss = 1 - stat.hit / stat.prompt
        self._expire(now)
        self._refresh(stat)

    @staticmethod
    def _count_below(node: _Node | None, delta: int) -> None:
        while node is not None:
            node.below += delta
            node = node.parent

    def _expire(self, now: float) -> None:
        """Entries older than the window leave it (their miss rate stays as last computed); a
        node left with none loses its stats and its allocation."""
        horizon = now - self.config.window_s
        while self._window and self._window[0][0] < horizon:
            _, stat, leaf = self._window.popleft()
            stat.count -= 1
            stat.hit -= leaf.end - len(leaf.tokens)  # its current length, as theirs reads it
            stat.prompt -= leaf.end
            leaf.entries -= 1
            if stat.count > 0:
                self._refresh(stat)
            else:
                self._unregister(stat)
                node = stat.node
                node.stat = None
                node.alloc, node.aver = set(), self._version
                self._count_below(node, -1)
                self._prune(node)
            self._prune(leaf)

    # ------------------------------------------------------------------ the per-GPU sums

    def _refresh(self, stat: _Stat) -> None:
        """Re-enter a windowed node in the sums and candidate lists of the GPUs it is allocated to."""
        self._unregister(stat)
        node = stat.node
        alloc = node.alloc
        if not alloc:
            return
        cost = stat.miss * stat.count * self._prefill(node) / len(alloc)
        fixed, refs, out = _exact(cost), node.refs, stat.out
        two = stat.count >= self.config.rebalance_min_requests
        movable = two and node.large()
        stat.reg = reg = _Reg(fixed, cost, {s: refs.get(s, 0) * out for s in alloc}, two, movable)
        for s, d in reg.decode.items():
            w = self._slots[s]
            w.p_all += fixed
            w.d_all += d
            if two:
                w.p_two += fixed
                w.d_two += d
                if movable:
                    if s in refs:
                        w.cands_busy[stat.uid] = stat
                    else:
                        insort(w.cands, (cost, stat.uid, stat))

    def _unregister(self, stat: _Stat) -> None:
        reg, stat.reg = stat.reg, None
        if reg is None:
            return
        for s, d in reg.decode.items():
            w = self._slots[s]
            w.p_all -= reg.fixed
            w.d_all -= d
            if reg.two:
                w.p_two -= reg.fixed
                w.d_two -= d
                if reg.movable and w.cands_busy.pop(stat.uid, None) is None:
                    del w.cands[bisect_left(w.cands, (reg.cost, stat.uid))]

    def _prefill(self, node: _Node) -> float:
        """Their prefill time of the node's own tokens (cached until it is split)."""
        if node.pt is None:
            node.pt = self.config.prefill.seconds(len(node.tokens), node.end)
        return node.pt

    # ------------------------------------------------------------------ the virtual LRU

    def _lru(self, w: _Worker, idle_only: bool) -> Iterator[_Node]:
        """The nodes `w` holds in their heap order: idle ones by recency (an all-zero vector is
        the least), then the rest by running-request vector (only those not running on `w`
        for a real eviction)."""
        yield from w.idle
        rest = [n for n in w.busy if not idle_only or w.slot not in n.refs]
        heapify(rest)
        while rest:
            yield heappop(rest)

    def _pops(self, w: _Worker, idle_only: bool, extra: list[_Node]) -> Iterator[_Node]:
        """Their heap's pops: the held nodes merged with the parents pushed on the way."""
        base = self._lru(w, idle_only)
        head = next(base, None)
        while True:
            if extra and (head is None or extra[0] < head):
                yield heappop(extra)
            elif head is not None:
                node, head = head, next(base, None)
                yield node
            else:
                return

    def _eviction(self, leaf: _Node, slot: int) -> float:
        """Their virtual_evict_for_routing: as if memory were full, pop nodes of the GPU until
        the leaf's tokens are freed (counting a node again when popped again), pushing a node's
        parent each time none of its held siblings is left unvisited; price the distinct nodes."""
        w = self._slots[slot]
        need, got, extra = len(leaf.tokens), 0, []
        seen: dict[_Node, None] = {}
        seen_kids: dict[_Node, int] = {}
        pops = self._pops(w, False, extra)
        while got < need:
            x = next(pops, None)
            if x is None or x is self.root:
                break
            got += len(x.tokens)
            if x not in seen:
                seen[x] = None
                if slot in x.cached:
                    seen_kids[x.parent] = seen_kids.get(x.parent, 0) + 1
            if x.parent.kids.get(slot, 0) == seen_kids.get(x.parent, 0):
                heappush(extra, x.parent)
        return math.fsum(self._eviction_cost(v, slot) for v in seen)

    def _eviction_cost(self, node: _Node, slot: int) -> float:
        """Recomputing a large node: its windowed miss rate x requests x prefill time (a node the
        window does not know: unseen_miss_rate x requests running through it on the GPU)."""
        if not node.large():
            return 0.0
        stat = node.stat
        miss = stat.miss if stat is not None else self.config.unseen_miss_rate
        requests = stat.count if stat is not None else node.refs.get(slot, 0)
        return miss * requests * self._prefill(node)

    def _evict(self, w: _Worker) -> None:
        """Their handle_eviction: a GPU over capacity drops nodes nobody runs through on it, in
        the same order, until back within it (parents of emptied siblings joining the heap)."""
        need = w.allocated - self.config.capacity_tokens
        if need <= 0:
            return
        got, extra = 0, []
        gone: dict[_Node, None] = {}
        gone_kids: dict[_Node, int] = {}
        pops = self._pops(w, True, extra)
        while got < need:
            x = next(pops, None)
            if x is None or x is self.root:
                break
            if w.slot in x.refs or w.slot not in x.cached or x in gone:
                continue
            got += len(x.tokens)
            gone[x] = None
            gone_kids[x.parent] = gone_kids.get(x.parent, 0) + 1
            if x.parent.kids.get(w.slot, 0) == gone_kids[x.parent]:
                heappush(extra, x.parent)
        for x in gone:
            self._drop(x, w)
        for x in gone:
            self._prune(x)

    def _drop(self, node: _Node, w: _Worker) -> None:
        node.cached.discard(w.slot)
        kids = node.parent.kids
        kids[w.slot] -= 1
        if not kids[w.slot]:
            del kids[w.slot]
        w.allocated -= len(node.tokens)
        if node.active:
            w.busy.discard(node)
        else:
            del w.idle[node]

    def _prune(self, node: _Node) -> None:
        """Free leaves no GPU holds, nobody runs through and the window does not name."""
        while (node is not self.root and node.parent is not None and not node.children and not node.cached
               and not node.active and node.stat is None and not node.entries):
            parent = node.parent
            del parent.children[node.tokens[0]]
            node.parent = None
            for w in self._order:
                self._ttfts.pop((node, w.slot), None)
            node = parent

    # ------------------------------------------------------------------ rebalancing

    def _rebalance(self) -> None:
        """Their handle_important_node_stealing: GPUs by decreasing load (nodes with enough
        requests only); while the heaviest left is at high_load_ratio x the lightest, it hands
        the lightest nodes, then drops out of the list."""
        cfg = self.config
        if self._routed < cfg.rebalance_after_per_gpu * len(self._order):
            return
        loads = sorted(((w, self._load_two(w)) for w in self._order), key=lambda e: -e[1])
        while len(loads) > 1:
            (big, hi), (small, lo) = loads[0], loads[-1]
            if hi < cfg.high_load_ratio * lo:
                return
            loads[-1] = (small, self._steal(big, small, hi, lo))
            loads = loads[1:]

    def _steal(self, big: _Worker, small: _Worker, hi: float, lo: float) -> float:
        """Move `big`'s cheapest movable nodes (and their subtrees) to `small` while that keeps
        big above small, until within the ratio; a lone candidate is instead shared, at half its
        cost, if its TTFT on `big` doubled. Returns small's new load."""
        cfg = self.config
        busy = sorted((self._node_cost(s, big), s.node, s) for s in big.cands_busy.values())
        if len(big.cands) + len(busy) == 1:
            stat = busy[0][2] if busy else big.cands[0][2]
            node = stat.node
            if small.slot not in node.alloc and self._overloaded(node, big.slot):
                lo += self._node_cost(stat, big) / 2
                node.alloc.add(small.slot)
                self._refresh(stat)
                self._ttfts.pop((node, big.slot), None)
            return lo
        for cost, node, _ in merge(self._ascending(list(big.cands)), busy):
            if hi - cost < lo + cost:
                break
            hi -= cost
            lo += cost
            self._move(node, small.slot)
            if hi < cfg.high_load_ratio * lo:
                break
        return lo

    def _node_cost(self, stat: _Stat, w: _Worker) -> float:
        """Their get_node_cost on `w`: its prefill cost plus its running requests' decoding."""
        return stat.reg.cost + stat.node.refs.get(w.slot, 0) * stat.out * w.tpot

    @staticmethod
    def _ascending(cands: list) -> Iterator[tuple[float, _Node, _Stat]]:
        """(cost, node, stat) by cost, equal costs in their node order."""
        i = 0
        while i < len(cands):
            j = i + 1
            while j < len(cands) and cands[j][0] == cands[i][0]:
                j += 1
            yield from sorted((c, s.node, s) for c, _, s in cands[i:j])
            i = j

    def _move(self, node: _Node, slot: int) -> None:
        """Allocate `node` and every node below it to `slot` alone (their update_children): at
        once for the windowed nodes, whose loads move; the others take it when next walked."""
        self._version += 1
        node.sub = _Override(self._version, frozenset((slot,)))
        stack = [node]
        while stack:
            x = stack.pop()
            if x.stat is not None:  # the node moved is one (a candidate)
                x.alloc, x.aver = {slot}, self._version
                self._refresh(x.stat)
            stack.extend(c for c in x.children.values() if c.below)

    def _overloaded(self, node: _Node, slot: int) -> bool:
        """Their is_node_overloaded: the stored TTFTs split at half a window ago; both halves
        non-empty and the newer half's mean at least overload_ratio x the older half's."""
        samples = self._ttfts.get((node, slot))
        if samples is None:
            return False
        n_old, old, n_new, new = samples.halves(self.clock() - self.config.ttft_window_s / 2)
        return bool(n_old and n_new) and new >= self.config.overload_ratio * old

    # ------------------------------------------------------------------ feedback

    def on_done(self, done: RequestDone) -> None:
        """Their finish_request: touch the path, add the TTFT to the important node's samples,
        release the path's running request, and add the TPOT to the GPU's median."""
        pending = self._pending.pop(done.request_id, None)
        if pending is None:
            return
        slot, leaf = pending
        w = self._slots[slot]
        path = []
        node = leaf
        while node is not self.root:
            path.append(node)
            node = node.parent
        for node in reversed(path):
            self._touch(node)
        important = self._important(leaf)
        if important is not None:
            self._add_ttft(important, slot, done.ttft)
        freed = [node for node in path if self._release(node, slot)]
        for node in reversed(freed):  # root first: increasing recency
            for s in node.cached:
                other = self._slots[s]
                other.busy.discard(node)
                other.idle[node] = None
        for node in path:
            if node.stat is not None:
                self._refresh(node.stat)
        if done.ok and done.output_tokens != 1:
            tpot = (done.latency - done.ttft) / max(1, done.output_tokens)
            if tpot != 0:
                self._add_tpot(w, tpot)
        for node in freed:
            self._prune(node)

    def _release(self, node: _Node, slot: int) -> bool:
        """One running request fewer through `node` on `slot`; whether none is left anywhere."""
        left = node.refs.get(slot, 0) - 1
        if left < 0:
            return False
        if left:
            node.refs[slot] = left
        else:
            del node.refs[slot]
        node.active -= 1
        node.vec = None
        return not node.active

    def _add_ttft(self, node: _Node, slot: int, ttft: float) -> None:
        """Their add_data_point: append, then drop this key's samples older than the window."""
        now = self.clock()
        samples = self._ttfts.get((node, slot))
        if samples is None:
            samples = self._ttfts[(node, slot)] = _Ttfts()
        samples.add(now, ttft, now - self.config.ttft_window_s)

    @staticmethod
    def _add_tpot(w: _Worker, tpot: float) -> None:
        if len(w.tpots) == w.tpots.maxlen:
            del w.ordered[bisect_left(w.ordered, w.tpots[0])]
        w.tpots.append(tpot)
        insort(w.ordered, tpot)
        n = len(w.ordered)
        w.tpot = w.ordered[n // 2] if n % 2 else (w.ordered[n // 2 - 1] + w.ordered[n // 2]) / 2

    # ------------------------------------------------------------------ removal

    def _rebuild(self, gone: int) -> None:
        """Forget slot `gone` everywhere, then rebuild every GPU's lists and sums from the tree."""
        for w in self._order:
            w.allocated, w.idle, w.busy = 0, OrderedDict(), set()
            w.p_all = w.d_all = w.p_two = w.d_two = 0
            w.cands, w.cands_busy = [], {}
        self.root.alloc.discard(gone)
        nodes, stack = [], [(c, None) for c in self.root.children.values()]
        while stack:
            node, above = stack.pop()
            nodes.append(node)
            self._fresh(node, above)
            stack.extend((c, _later(above, node.sub)) for c in node.children.values())
            node.alloc.discard(gone)
            node.cached.discard(gone)
            node.kids.pop(gone, None)
            node.active -= node.refs.pop(gone, 0)
            node.vec = None
            if node.stat is not None:
                node.stat.reg = None
        self.root.kids.pop(gone, None)
        nodes.sort(key=lambda n: n.seq)
        for node in nodes:
            for s in node.cached:
                w = self._slots[s]
                w.allocated += len(node.tokens)
                if node.active:
                    w.busy.add(node)
                else:
                    w.idle[node] = None
            if node.stat is not None:
                self._refresh(node.stat)
        for node in nodes:
            self._prune(node)
