"""What a request's pages cost the requests that would have reused what they evict.

A worker whose cache is full makes room for a new prompt's pages by evicting its least recently
used ones; a later request that would have found them cached computes them again. The cost of
evicting a node is therefore the prefill of its evicted pages times how often it will be reused
there, predicted by how often it was reused there in the tree's window (its requests on the
worker, less the one that stored it). A prompt never reused costs nothing to evict, a hot
system prompt a great deal, whatever their age. E2's M term is the same curve with every request
counted, the one that stored the node included (`count_storer`), as the paper has it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterator

from ..cost_model import CostModel
from ..global_tree import REQUESTS, GlobalTree, Node


class VictimCurve:
    """One worker's LRU nodes, least recent first, with the cumulative pages and eviction cost
    of evicting up to each: extended only as far as asked, and valid while the worker's LRU, the
    window's bucket and its prefill scale stay the same (`current`)."""

    def __init__(self, tree: GlobalTree, worker_id: str, bucket: int, page_size: int, cost: CostModel,
                 prefill_scale: float = 1.0, count_storer: bool = False) -> None:
        self.tree, self.worker_id, self.bucket = tree, worker_id, bucket
        self.page_size, self.cost, self.prefill_scale = page_size, cost, prefill_scale
        self._not_reuses = 0 if count_storer else 1  # requests through a node that were no reuse of it
        self.version = tree.lru_version(worker_id)
        self._lru: Iterator[Node] = tree.lru(worker_id)
        self._done = False
        self.nodes: list[Node] = []
        self.pages: list[int] = []  # cumulative
        self.costs: list[float] = []  # cumulative

    def current(self, bucket: int, prefill_scale: float) -> bool:
        return (self.version == self.tree.lru_version(self.worker_id) and self.bucket == bucket
                and self.prefill_scale == prefill_scale)

    def node_cost(self, node: Node, pages: int) -> float:
        """Recomputing the last `pages` pages of `node` for each of its predicted reuses here."""
        reuses = self.tree.stats(node, self.worker_id, self.bucket)[REQUESTS] - self._not_reuses
        if reuses <= 0:
            return 0.0
        tokens = pages * self.page_size
        return reuses * self.prefill_scale * self.cost.prefill_time(tokens, node.end - tokens)

    def evict(self, pages: int, keep: Collection[Node]) -> float:
        """Seconds of recomputation that evicting `pages` pages costs later requests; nodes in
        `keep` (the request's own prefix) are not evicted."""
        self._extend(pages)
        i = bisect_left(self.pages, pages)  # the victim that completes the eviction
        if any(node in keep for node in self.nodes[:i + 1]):
            return self._evict_skipping(pages, keep)
        if i == len(self.pages):  # fewer pages in its LRU than asked: all of them
            return self.costs[-1] if self.costs else 0.0
        pages_before, cost_before = (self.pages[i - 1], self.costs[i - 1]) if i else (0, 0.0)
        return cost_before + self.node_cost(self.nodes[i], pages - pages_before)

    def _extend(self, pages: int) -> None:
        while not self._done and (not self.pages or self.pages[-1] < pages):
            node = next(self._lru, None)
            if node is None:
                self._done = True
                return
            self.nodes.append(node)
            self.pages.append((self.pages[-1] if self.pages else 0) + len(node.hashes))
            self.costs.append((self.costs[-1] if self.costs else 0.0) + self.node_cost(node, len(node.hashes)))

    def _evict_skipping(self, pages: int, keep: Collection[Node]) -> float:
        total = 0.0
        for node in self.tree.lru(self.worker_id):
            if pages <= 0:
                break
            if node in keep:
                continue
            take = min(pages, len(node.hashes))
            total += self.node_cost(node, take)
            pages -= take
        return total

