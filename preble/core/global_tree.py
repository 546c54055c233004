"""The router's global prefix tree: which workers hold which prefix, and what requests used it.

Two sources feed it. Workers' KV events are exact: pages keyed by chained page hashes, so the
tree mirrors every worker's radix cache page for page. The router adds the prompts it routes, so
that windowed per-node statistics have a place to live and, with a TTL, so that a worker counts
as holding a prompt it was just given (before its events arrive, or for engines that send none).

Edges hold whole pages and all pages of an edge have the same holders (edges are split where
holders differ), so one walk reads every worker's cached length off the path. Each node keeps,
per worker, windowed sums of (requests, prefill seconds, output tokens) of the requests routed
through it; the root's sums are each worker's load. Nodes that no worker holds and no request used
for a window are freed a few at a time, so memory follows the cache and recent traffic only.

Token ids are stored as unsigned 32-bit integers: every vocabulary fits, and CPython converts a
list to this array type several times faster than to a signed one (a prompt is converted per
decision). A negative id raises OverflowError; the API rejects such prompts before routing.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .kv_events import ROOT_HASH, CacheCleared, KVEvent, PagesRemoved, PagesStored
from .window_stats import ROUTER_WINDOW, WindowSpec, WindowSums

# Windowed sums kept per node and worker.
REQUESTS, PREFILL_S, OUTPUT_TOKENS = 0, 1, 2
_NUM_STATS = 3
_ZEROS = [0.0] * _NUM_STATS


class PageSizeMismatch(ValueError):
    """A worker's KV events use another page size than the tree's."""


class EventGap(ValueError):
    """An event names a page the tree never saw: events were lost; resync the worker."""


class Node:
    __slots__ = ("parent", "key", "children", "tokens", "hashes", "depth", "held", "routed",
                 "last_used", "stats", "ttft", "assigned", "gc_at")

    def __init__(self, parent: Node | None, tokens: array, hashes: array, depth: int,
                 last_used: float, key: bytes = b"") -> None:
        self.parent = parent
        self.key = key  # first page's bytes: this node's key among its parent's children
        self.children: dict[bytes, Node] = {}
        self.tokens = tokens
        self.hashes = hashes  # per page; 0 where unknown (pages only the router inserted)
        self.depth = depth  # tokens before this node
        self.held = 0  # bitmask of worker slots whose KV events say they hold every page here
        self.routed: dict[int, float] | None = None  # slot -> expiry of a router-side holding
        self.last_used = last_used  # when a routed request last went through here
        self.stats: dict[str, WindowSums] | None = None  # worker -> (requests, prefill s, output tokens)
        self.ttft: dict[str, WindowSums] | None = None  # worker -> (requests, TTFT sum), set by policies
        self.assigned = None  # a policy's steering decision for this subtree (opaque here)
        self.gc_at: float | None = None  # when the collector will look at this node

    @property
    def end(self) -> int:
        """Tokens from the root to the end of this node."""
        return self.depth + len(self.tokens)

    def __repr__(self) -> str:
        return f"Node(depth={self.depth}, pages={len(self.hashes)}, held={self.held:b})"


@dataclass(slots=True)
class TreeMatch:
    """A query's walk down the tree; hand it to `GlobalTree.insert` to materialise the path."""

    tokens: array  # the query
    cached_tokens: int  # the longest prefix of the query some worker holds
    path: list[Node]  # nodes the query covers entirely, root first (root excluded)
    partial: Node | None  # the node where the query leaves the tree part-way, if any
    partial_pages: int  # pages of `partial` the query matches
    depth: int  # tokens of the query the tree has, held or not
    ends: list[tuple[int, int]]  # (slot mask, tokens): the slots holding exactly that much of it, shallowest first
    slot_ids: list[str | None]  # the tree's slot -> worker, read at once (the tree owns it)
    _held: dict[str, int] | None = None

    @property
    def held(self) -> dict[str, int]:
        """Worker -> tokens of the query it holds; workers holding none are absent."""
        if self._held is None:
            ids = self.slot_ids
            self._held = {ids[slot]: tokens for mask, tokens in self.ends for slot in mask_slots(mask)}
        return self._held


def mask_slots(mask: int) -> list[int]:
    """The set bits of `mask`, lowest first (a string scan: faster than bit tricks for dense masks)."""
    return [i for i, c in enumerate(bin(mask)[:1:-1]) if c == "1"]


class GlobalTree:
    def __init__(self, page_size: int, clock: Callable[[], float], window_s: float = ROUTER_WINDOW.seconds,
                 window_buckets: int = ROUTER_WINDOW.buckets) -> None:
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        self.page_size = page_size
        self.clock = clock
        self.window = WindowSpec(window_s, window_buckets)
        self.root = Node(None, array("I"), array("q"), 0, clock())
        self._by_hash: dict[int, Node] = {}
        self._slots: dict[str, int] = {}
        self._slot_ids: list[str | None] = []
        self._lru: list[OrderedDict[Node, None]] = []  # per slot: nodes it holds, least recent first
        self._lru_pages: list[int] = []  # per slot: pages of the nodes in its LRU
        self._lru_version: list[int] = []
        self._gc_heap: list[tuple[float, int, Node]] = []
        self._gc_seq = itertools.count()
        self.num_nodes = 1
        self.slots_version = 0  # changes whenever a worker gains or loses its slot (`slot_of`)

    # ------------------------------------------------------------------ workers

    def _slot(self, worker_id: str) -> int:
        slot = self._slots.get(worker_id)
        if slot is None:
            free = [i for i, w in enumerate(self._slot_ids) if w is None]
            if free:
                slot = free[0]
                self._slot_ids[slot] = worker_id
            else:
                slot = len(self._slot_ids)
                self._slot_ids.append(worker_id)
                self._lru.append(OrderedDict())
                self._lru_pages.append(0)
                self._lru_version.append(0)
            self._slots[worker_id] = slot
            self.slots_version += 1
        return slot

    def slot_of(self, worker_id: str) -> int | None:
        """The worker's bit in `Node.held` and `TreeMatch.ends` masks (None: the tree has not seen
        it); stable while `slots_version` is."""
        return self._slots.get(worker_id)

    def remove_worker(self, worker_id: str) -> None:
        """Forget every holding of the worker (its statistics expire with the window)."""
        slot = self._slots.get(worker_id)
        if slot is None:
            return
        self._drop_holdings(slot, events=True, routed=True)
        del self._slots[worker_id]
        self._slot_ids[slot] = None
        self.slots_version += 1

    def replace_worker(self, worker_id: str, stored: Iterable[PagesStored]) -> None:
        """A full resync: the worker holds exactly what these store events say (parents first)."""
        slot = self._slot(worker_id)
        self._drop_holdings(slot, events=True, routed=True)
        for ev in stored:
            self._stored(slot, ev)

    # ------------------------------------------------------------------ KV events

    def apply(self, worker_id: str, event: KVEvent) -> None:
        slot = self._slot(worker_id)
        if isinstance(event, PagesStored):
            self._stored(slot, event)
        elif isinstance(event, PagesRemoved):
            self._removed(slot, event.page_hashes)
        elif isinstance(event, CacheCleared):
            self._drop_holdings(slot, events=True, routed=False)
        else:
            raise TypeError(f"not a KV event: {event!r}")

    def _stored(self, slot: int, ev: PagesStored) -> None:
        ps = self.page_size
        n_pages = len(ev.page_hashes)
        if len(ev.token_ids) != n_pages * ps:
            raise PageSizeMismatch(
                f"worker {self._slot_ids[slot]!r} stored {len(ev.token_ids)} tokens in {n_pages} "
                f"pages, but this tree's page size is {ps}")
        if n_pages == 0:
            return
        tokens = array("I", ev.token_ids)
        hashes = ev.page_hashes
        bit = 1 << slot
        if ev.parent_hash == ROOT_HASH:
            node, at = self.root, 0  # `at`: pages of `node` that precede the position
        else:
            node = self._by_hash.get(ev.parent_hash)
            if node is None:
                raise EventGap(f"worker {self._slot_ids[slot]!r} stored pages under unknown page "
                               f"{ev.parent_hash:#x}")
            at = node.hashes.index(ev.parent_hash) + 1
        now = self.clock()
        i = 0
        while i < n_pages:
            if at == len(node.hashes):
                child = node.children.get(tokens[i * ps:(i + 1) * ps].tobytes())
                if child is None:
                    self._add_leaf(node, tokens[i * ps:], array("q", hashes[i:]), now, bit)
                    return
                node, at = child, 0
                continue
            run = min(len(node.hashes) - at, n_pages - i)  # pages both have here: equal, as a rule
            if node.tokens[at * ps:(at + run) * ps] != tokens[i * ps:(i + run) * ps]:
                run = 0
                while node.tokens[(at + run) * ps:(at + run + 1) * ps] == tokens[(i + run) * ps:(i + run + 1) * ps]:
                    run += 1
            if run == 0:  # the new pages branch off inside this node
                node = self._split(node, at)
                continue
            for j in range(run):
                known, h = node.hashes[at + j], hashes[i + j]
                if known and known != h:
                    raise PageSizeMismatch(f"page hash {h:#x} from worker {self._slot_ids[slot]!r} "
                                           f"differs from {known:#x} for the same tokens")
            if not node.held & bit:
                node = self._isolate(node, at, at + run)
                at = 0
                self._hold(node, bit, slot)
            for j in range(run):
                if not node.hashes[at + j]:
                    node.hashes[at + j] = hashes[i + j]
                    self._by_hash[hashes[i + j]] = node
            i += run
            at += run

    def _removed(self, slot: int, page_hashes: list[int]) -> None:
        bit = 1 << slot
        runs: list[list[int]] = []  # consecutive pages of one node, by hash
        last: tuple[Node, int] | None = None
        for h in page_hashes:
            node = self._by_hash.get(h)
            if node is None:
                raise EventGap(f"worker {self._slot_ids[slot]!r} removed unknown page {h:#x}")
            nxt = last[1] + 1 if last is not None and last[0] is node else -1
            if 0 < nxt < len(node.hashes) and node.hashes[nxt] == h:  # the run goes on (no search)
                runs[-1].append(h)
                last = (node, nxt)
                continue
            runs.append([h])
            last = (node, node.hashes.index(h))
        for run in runs:
            node = self._by_hash[run[0]]
            if not node.held & bit:
                continue
            start = node.hashes.index(run[0])
            node = self._isolate(node, start, start + len(run))
            node.held &= ~bit
            self._release(node, slot)

    def _drop_holdings(self, slot: int, *, events: bool, routed: bool) -> None:
        bit = 1 << slot
        for node in list(self._lru[slot]):
            if events:
                node.held &= ~bit
            if routed and node.routed:
                node.routed.pop(slot, None)
                if not node.routed:
                    node.routed = None
            self._release(node, slot)

    # ------------------------------------------------------------------ matching and routing

    def match(self, tokens: list[int] | array) -> TreeMatch:
        """Walk the query down the tree; changes nothing."""
        q = tokens if isinstance(tokens, array) and tokens.typecode == "I" else array("I", tokens)
        ps = self.page_size
        limit = len(q) - len(q) % ps
        now = self.clock()
        ends: list[tuple[int, int]] = []
        path: list[Node] = []
        node, pos = self.root, 0
        alive = -1  # slots holding every node so far (-1: all, before the first node)
        partial, partial_pages = None, 0
        while pos < limit:
            child = node.children.get(q[pos:pos + ps].tobytes())
            if child is None:
                break
            mask = child.held
            if child.routed:
                for slot, exp in child.routed.items():
                    if exp > now:
                        mask |= 1 << slot
            n = len(child.tokens)
            full = pos + n <= limit and q[pos:pos + n] == child.tokens
            if alive != -1 and alive & ~mask:
                ends.append((alive & ~mask, pos))
            alive = mask if alive == -1 else alive & mask
            if full:
                path.append(child)
                node, pos = child, pos + n
                continue
            lo, hi = 1, min(n, limit - pos) // ps  # pages matched: the first page always does
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if q[pos:pos + mid * ps] == child.tokens[:mid * ps]:
                    lo = mid
                else:
                    hi = mid - 1
            partial, partial_pages = child, lo
            pos += lo * ps
            break
        if alive != -1 and alive:
            ends.append((alive, pos))
        return TreeMatch(q, ends[-1][1] if ends else 0, path, partial, partial_pages, pos, ends, self._slot_ids)

    def insert(self, match: TreeMatch, worker_id: str | None = None,
               expires_at: float | None = None) -> list[Node]:
        """Add the query's full pages to the tree, marking its path used now; with a worker, that
        worker holds the path until `expires_at`. Returns the path, root first (root excluded).
        `match` must come from `match()` with no tree change in between."""
        now = self.clock()
        path = list(match.path)
        node = path[-1] if path else self.root
        if match.partial is not None:
            node = self._split(match.partial, match.partial_pages)
            path.append(node)
        ps = self.page_size
        limit = len(match.tokens) - len(match.tokens) % ps
        if match.depth < limit:
            rest = match.tokens[match.depth:limit]
            node = self._add_leaf(node, rest, array("q", bytes(8 * (len(rest) // ps))), now, 0)
            path.append(node)
        for n in path:
            n.last_used = now
        if worker_id is not None and expires_at is not None:
            slot = self._slot(worker_id)
            for n in reversed(path):  # deepest first: ancestors end up more recent, as in a radix LRU
                routed = n.routed if n.routed is not None else {}
                routed[slot] = max(expires_at, routed.get(slot, expires_at))
                n.routed = routed
                self._touch(slot, n)
                self._schedule(n, expires_at)
            self._lru_version[slot] += 1
        elif match.depth < limit:
            self._schedule(node, now + self.window.seconds)
        return path

    def drop_routed(self, worker_id: str, expiring_by: float) -> None:
        """Forget the worker's router-side holdings that expire at or before `expiring_by`."""
        slot = self._slots.get(worker_id)
        if slot is None:
            return
        for node in list(self._lru[slot]):
            if node.routed and node.routed.get(slot, float("inf")) <= expiring_by:
                del node.routed[slot]
                if not node.routed:
                    node.routed = None
                self._release(node, slot)

    def routed_expiry(self, node: Node, worker_id: str) -> float | None:
        slot = self._slots.get(worker_id)
        return None if slot is None or not node.routed else node.routed.get(slot)

    def holders(self, node: Node) -> list[str]:
        """Workers holding the node now (by events or by an unexpired routed holding)."""
        mask = node.held
        if node.routed:
            now = self.clock()
            for slot, exp in node.routed.items():
                if exp > now:
                    mask |= 1 << slot
        return [self._slot_ids[s] for s in mask_slots(mask)]

    def top(self, node: Node) -> Node | None:
        """The root's child above (or at) `node`; None if `node` was freed."""
        while node.parent is not self.root:
            if node.parent is None:
                return None
            node = node.parent
        return node

    def held_prefix(self, node: Node, worker_id: str) -> int:
        """Tokens of the path from the root through `node` that the worker holds (a held node
        implies held ancestors: pages are cached only after their prefix)."""
        slot = self._slots.get(worker_id)
        if slot is None:
            return 0
        bit, now = 1 << slot, self.clock()
        while node is not None and node is not self.root:
            if node.held & bit or (node.routed and node.routed.get(slot, now) > now):
                return node.end
            node = node.parent
        return 0

    def hottest(self, limit: int, budget: int = 4096) -> list[tuple[Node, float]]:
        """The prefixes most requests went through in the window, as (node, requests), most
        first. A prefix whose requests all continue into one longer prefix gives way to it (the
        longer one says more). Best first by requests; at most `budget` nodes are looked at."""
        b = self.bucket()

        def requests(node: Node) -> float:
            return sum(s.totals(b)[REQUESTS] for s in node.stats.values()) if node.stats else 0.0

        seq = itertools.count()
        heap = [(-requests(c), next(seq), c) for c in self.root.children.values()]
        heapq.heapify(heap)
        out: list[tuple[Node, float]] = []
        while heap and len(out) < limit and budget > 0:
            neg, _, node = heapq.heappop(heap)
            if -neg < 2:  # one request is no shared prefix; nothing after it has more
                break
            kids = [(requests(c), c) for c in node.children.values()]
            budget -= 1 + len(kids)
            for n, c in kids:
                heapq.heappush(heap, (-n, next(seq), c))
            if not any(n >= -neg for n, _ in kids):
                out.append((node, -neg))
        return out

    def path_tokens(self, node: Node) -> list[int]:
        """The token ids from the root to the end of `node`."""
        parts = []
        while node is not None and node is not self.root:
            parts.append(node.tokens)
            node = node.parent
        return [t for part in reversed(parts) for t in part]

    def held_pages(self, worker_id: str) -> int:
        """Pages the tree believes the worker holds (by events or routed holdings not yet collected)."""
        slot = self._slots.get(worker_id)
        return 0 if slot is None else self._lru_pages[slot]

    def lru(self, worker_id: str) -> Iterator[Node]:
        """Nodes the worker holds, least recently used first (do not change the tree meanwhile)."""
        slot = self._slots.get(worker_id)
        return iter(()) if slot is None else iter(self._lru[slot])

    def lru_version(self, worker_id: str) -> int:
        """Changes whenever the worker's `lru()` order or membership may have changed."""
        slot = self._slots.get(worker_id)
        return -1 if slot is None else self._lru_version[slot]

    # ------------------------------------------------------------------ windowed statistics

    def bucket(self) -> int:
        return self.window.bucket(self.clock())

    def record(self, node: Node, worker_id: str, values: tuple[float, float, float],
               at: float | None = None) -> None:
        """Add (requests, prefill seconds, output tokens) to `node` and its ancestors for the
        worker, in the bucket of time `at` (default now)."""
        b = self.window.bucket(self.clock() if at is None else at)
        n_buckets = self.window.buckets
        while node is not None:
            if node is not self.root and node.parent is None:
                return  # freed meanwhile
            stats = node.stats
            if stats is None:
                stats = node.stats = {}
            sums = stats.get(worker_id)
            if sums is None:
                sums = stats[worker_id] = WindowSums(n_buckets, _NUM_STATS)
            sums.add(b, values)
            node = node.parent

    def stats(self, node: Node, worker_id: str, bucket: int | None = None) -> list[float]:
        """(requests, prefill seconds, output tokens) through `node` on the worker, in the window
        ending with `bucket` (default: now's). Do not mutate the result."""
        sums = node.stats.get(worker_id) if node.stats else None
        if sums is None:
            return _ZEROS
        return sums.totals(self.bucket() if bucket is None else bucket)

    def requests_through(self, node: Node, bucket: int) -> float:
        """Requests through `node` in the window ending with `bucket`, on all workers together."""
        return sum(sums.totals(bucket)[0] for sums in node.stats.values()) if node.stats else 0.0

    def requests_on(self, worker_ids: Iterable[str], bucket: int) -> list[float]:
        """Each worker's requests in the window ending with `bucket` (the root's counts)."""
        root = self.root.stats or {}
        return [root[w].totals(bucket)[0] if w in root else 0.0 for w in worker_ids]

    def load(self, worker_id: str, bucket: int | None = None) -> list[float]:
        """The worker's windowed (requests, prefill seconds, output tokens): the root's stats."""
        return self.stats(self.root, worker_id, bucket)

    def move_stats(self, node: Node, src: str, dst: str) -> None:
        """Re-attribute the subtree's windowed statistics from worker `src` to `dst`, ancestors
        included, so loads reflect a subtree moved between workers."""
        moved = node.stats.get(src) if node.stats else None
        if moved is None:
            return
        b = self.bucket()
        anc = node.parent
        while anc is not None:
            if anc.stats and src in anc.stats:
                anc.stats[src].add_window(moved, b, -1.0)
            anc.stats = anc.stats or {}
            anc.stats.setdefault(dst, WindowSums(self.window.buckets, _NUM_STATS)).add_window(moved, b)
            anc = anc.parent
        stack = [node]
        while stack:
            n = stack.pop()
            sums = n.stats.pop(src, None) if n.stats else None
            if sums is None:
                continue
            target = n.stats.get(dst)
            if target is None:
                n.stats[dst] = sums
            else:
                target.add_window(sums, b)
            stack.extend(n.children.values())

    def record_ttft(self, node: Node, worker_id: str, ttft: float, at: float | None = None) -> None:
        if node is not self.root and node.parent is None:
            return
        node.ttft = node.ttft or {}
        sums = node.ttft.get(worker_id)
        if sums is None:
            sums = node.ttft[worker_id] = WindowSums(self.window.buckets, 2)
        sums.add(self.window.bucket(self.clock() if at is None else at), (1.0, ttft))

    def ttft_halves(self, node: Node, worker_id: str) -> tuple[list[float], list[float]]:
        """(requests, TTFT sum) of the node's requests on the worker in the older and newer half
        of the window."""
        sums = node.ttft.get(worker_id) if node.ttft else None
        if sums is None:
            return [0.0, 0.0], [0.0, 0.0]
        return sums.halves(self.bucket())

    def reset_ttft(self, node: Node, worker_id: str) -> None:
        if node.ttft:
            node.ttft.pop(worker_id, None)

    # ------------------------------------------------------------------ memory

    def gc(self, budget: int = 64) -> int:
        """Look at up to `budget` nodes whose time has come; free those no worker holds, no
        request used for a window and with no children. Returns how many were freed."""
        now = self.clock()
        heap = self._gc_heap
        freed = 0
        while heap and budget > 0 and heap[0][0] <= now:
            at, _, node = heapq.heappop(heap)
            if node.gc_at != at or (node.parent is None):
                continue
            budget -= 1
            node.gc_at = None
            if node.routed:
                for slot, exp in list(node.routed.items()):
                    if exp <= now:
                        del node.routed[slot]
                        self._release(node, slot)
                if node.routed:
                    self._schedule(node, min(node.routed.values()))
                    continue
                node.routed = None
            if node.held or node.children:
                continue  # rescheduled when its holders or children go
            if node.last_used + self.window.seconds > now:
                self._schedule(node, node.last_used + self.window.seconds)
                continue
            self._free(node)
            freed += 1
        return freed

    # ------------------------------------------------------------------ internals

    def _add_leaf(self, parent: Node, tokens: array, hashes: array, now: float, bit: int) -> Node:
        leaf = Node(parent, tokens, hashes, parent.end, now, tokens[:self.page_size].tobytes())
        parent.children[leaf.key] = leaf
        for h in hashes:
            if h:
                self._by_hash[h] = leaf
        self.num_nodes += 1
        if bit:
            self._hold(leaf, bit, bit.bit_length() - 1)
        return leaf

    def _hold(self, node: Node, bit: int, slot: int) -> None:
        node.held |= bit
        self._touch(slot, node)
        self._lru_version[slot] += 1

    def _touch(self, slot: int, node: Node) -> None:
        """Put the node in the slot's LRU, as its most recent entry."""
        lru = self._lru[slot]
        if node in lru:
            lru.move_to_end(node)
        else:
            lru[node] = None
            self._lru_pages[slot] += len(node.hashes)

    def _release(self, node: Node, slot: int) -> None:
        """The slot may no longer hold the node: update its LRU and maybe schedule the node."""
        if not node.held & (1 << slot) and not (node.routed and slot in node.routed):
            if self._lru[slot].pop(node, 0) is None:
                self._lru_pages[slot] -= len(node.hashes)
                self._lru_version[slot] += 1
        if not node.held and not node.routed:
            self._schedule(node, max(self.clock(), node.last_used + self.window.seconds))

    def _schedule(self, node: Node, at: float) -> None:
        if node is self.root or (node.gc_at is not None and node.gc_at <= at):
            return
        node.gc_at = at
        heapq.heappush(self._gc_heap, (at, next(self._gc_seq), node))

    def _split(self, node: Node, n_pages: int) -> Node:
        """Cut `node` after `n_pages` pages; the new upper part is returned and `node` (which keeps
        its statistics' meaning: the requests through its end) becomes the lower part."""
        ps = self.page_size
        cut = n_pages * ps
        upper = Node(node.parent, node.tokens[:cut], node.hashes[:n_pages], node.depth,
                     node.last_used, node.key)
        upper.held = node.held
        upper.routed = dict(node.routed) if node.routed else None
        if node.stats:
            upper.stats = {w: s.copy() for w, s in node.stats.items()}
        node.parent.children[node.key] = upper
        node.tokens, node.hashes = node.tokens[cut:], node.hashes[n_pages:]
        node.depth += cut
        node.key = node.tokens[:ps].tobytes()
        node.parent = upper
        upper.children[node.key] = node
        for h in upper.hashes:
            if h:
                self._by_hash[h] = upper
        mask = upper.held
        if upper.routed:
            for slot in upper.routed:
                mask |= 1 << slot
        for slot in mask_slots(mask):
            self._lru[slot][upper] = None  # an ancestor: counts as at least as recent (the node's
            # pages are shared between it and `upper`: the slot's page count stays)
            self._lru_version[slot] += 1
        self.num_nodes += 1
        return upper

    def _isolate(self, node: Node, start: int, end: int) -> Node:
        """Split so that pages [start, end) of `node` form a node of their own; return it."""
        if start > 0:
            self._split(node, start)
        if end - start < len(node.hashes):
            node = self._split(node, end - start)
        return node

    def _free(self, node: Node) -> None:
        parent = node.parent
        del parent.children[node.key]
        for h in node.hashes:
            if h and self._by_hash.get(h) is node:
                del self._by_hash[h]
        node.parent = None
        self.num_nodes -= 1
        if parent is not self.root and not parent.children and not parent.held and not parent.routed:
            self._schedule(parent, max(self.clock(), parent.last_used + self.window.seconds))
