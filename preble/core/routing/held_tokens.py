"""Tokens of a prompt each worker holds, as an array in the load table's order.

A tree match says who holds how much as slot masks (`TreeMatch.ends`); a decision prices every
worker over arrays. The masks repeat from one decision to the next (the same nodes, the same
holders), so each mask's worker indices are found once and kept until the workers or the tree's
slots change: a decision then costs one array write per distinct holding, not a loop over workers.
"""

from __future__ import annotations

import numpy as np

from ..global_tree import GlobalTree, TreeMatch, mask_slots


class HeldTokens:
    def __init__(self, tree: GlobalTree, cache_size: int) -> None:
        self.tree = tree
        self.cache_size = cache_size
        self._ids: list[str] = []
        self._slots_version = -1
        self._index_of_slot: dict[int, int] = {}
        self._indices: dict[int, np.ndarray] = {}  # slot mask -> worker indices

    def reset(self, worker_ids: list[str]) -> None:
        """The workers, in the order of the arrays to fill (call after every membership change)."""
        self._ids = list(worker_ids)
        self._slots_version = -1

    def __call__(self, match: TreeMatch) -> np.ndarray:
        """Tokens of the matched prompt each worker holds."""
        if self._slots_version != self.tree.slots_version:
            slots = ((self.tree.slot_of(w), i) for i, w in enumerate(self._ids))
            self._index_of_slot = {slot: i for slot, i in slots if slot is not None}
            self._indices.clear()
            self._slots_version = self.tree.slots_version
        held = np.zeros(len(self._ids))  # floats, as the estimates use them
        for mask, tokens in match.ends:
            where = self._indices.get(mask)
            if where is None:
                where = self._where(mask)
            held[where] = tokens
        return held

    def _where(self, mask: int) -> np.ndarray:
        if len(self._indices) >= self.cache_size:
            self._indices.clear()
        index = self._index_of_slot
        where = self._indices[mask] = np.array([index[s] for s in mask_slots(mask) if s in index], np.int64)
        return where
