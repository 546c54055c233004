"""The approximate per-worker prefix tree of SGLang's cache-aware router, over token ids.

It records what the router sent where, not what workers cache: a radix tree whose nodes list the
workers prompts through them were routed to, each worker's share capped in tokens and trimmed
least recently used leaf first. Kept to reproduce that baseline faithfully; E2 uses the exact,
event-fed `GlobalTree` instead.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict


class _Node:
    __slots__ = ("parent", "children", "tokens", "tenants")

    def __init__(self, parent: _Node | None, tokens: array) -> None:
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.tokens = tokens
        self.tenants: dict[str, float] = {}  # worker -> last time a prompt through here went to it


def _common(a: array, b: array) -> int:
    """Length of the common prefix of two token arrays."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class ApproxTree:
    def __init__(self, max_tokens_per_worker: int) -> None:
        self.max_tokens = max_tokens_per_worker
        self.root = _Node(None, array("I"))
        self.sizes: dict[str, int] = {}  # worker -> tokens of the tree it is listed on
        self._lru: dict[str, OrderedDict[_Node, None]] = {}  # per worker, least recent first

    def match(self, tokens: list[int]) -> tuple[int, str | None]:
        """Longest routed prefix of `tokens` and the worker it most recently went to."""
        q = array("I", tokens)
        node, pos = self.root, 0
        while pos < len(q):
            child = node.children.get(q[pos])
            if child is None:
                break
            n = len(child.tokens)
            if q[pos:pos + n] == child.tokens:
                node, pos = child, pos + n
                continue
            pos += _common(q[pos:pos + n], child.tokens)
            node = child
            break
        if node is self.root:
            return 0, None
        return pos, max(node.tenants, key=node.tenants.__getitem__)

    def insert(self, tokens: list[int], worker: str, now: float) -> None:
        q = array("I", tokens)
        lru = self._lru.setdefault(worker, OrderedDict())
        self.sizes.setdefault(worker, 0)
        path = []
        node, pos = self.root, 0
        while pos < len(q):
            child = node.children.get(q[pos])
            if child is None:
                child = _Node(node, q[pos:])
                node.children[q[pos]] = child
            else:
                k = _common(q[pos:pos + len(child.tokens)], child.tokens)
                if k < len(child.tokens):
                    child = self._split(child, k)
            path.append(child)
            node, pos = child, pos + len(child.tokens)
        for n in reversed(path):  # deepest first, so ancestors are more recent
            if worker not in n.tenants:
                self.sizes[worker] += len(n.tokens)
            n.tenants[worker] = now
            lru[n] = None
            lru.move_to_end(n)
        self._trim(worker)

    def remove_worker(self, worker: str) -> None:
        for n in self._lru.pop(worker, ()):
            del n.tenants[worker]
            if not n.tenants and n.parent is not None:
                n.parent.children.pop(n.tokens[0], None)
        self.sizes.pop(worker, None)

    def _trim(self, worker: str) -> None:
        """Drop the worker's least recently used leaves until it is within its cap."""
        lru = self._lru[worker]
        while self.sizes[worker] > self.max_tokens and lru:
            node, _ = lru.popitem(last=False)
            if any(worker in c.tenants for c in node.children.values()):
                lru[node] = None  # not a leaf for this worker yet: its descendants go first
                continue
            del node.tenants[worker]
            self.sizes[worker] -= len(node.tokens)
            if not node.tenants:
                del node.parent.children[node.tokens[0]]

    def _split(self, node: _Node, k: int) -> _Node:
        upper = _Node(node.parent, node.tokens[:k])
        upper.tenants = dict(node.tenants)
        node.parent.children[node.tokens[0]] = upper
        node.tokens = node.tokens[k:]
        node.parent = upper
        upper.children[node.tokens[0]] = node
        for w in upper.tenants:
            self._lru[w][upper] = None
        return upper
