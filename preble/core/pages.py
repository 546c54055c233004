"""Page accounting for the KV pool.

The pool is cut into pages of `page_size` token slots. This allocator only hands out page ids;
the engine owns the tensors behind them and the simulator owns none, which is why it lives here.
"""

from __future__ import annotations

DEFAULT_PAGE_SIZE = 16  # token slots per KV page: the engine's, the router's and the simulator's default


class OutOfPages(RuntimeError):
    """Raised when an allocation asks for more pages than are free."""


class PageAllocator:
    """A free list of page ids with a conservation invariant: free + used == total."""

    def __init__(self, num_pages: int, page_size: int) -> None:
        if num_pages <= 0 or page_size <= 0:
            raise ValueError("num_pages and page_size must be positive")
        self.num_pages = num_pages
        self.page_size = page_size
        # Popping from the end hands out low ids first, which keeps tests readable.
        self._free = list(range(num_pages - 1, -1, -1))
        self._is_free = bytearray(b"\x01") * num_pages

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def pages_for(self, num_tokens: int) -> int:
        """Pages needed to hold `num_tokens` slots."""
        return -(-num_tokens // self.page_size)

    def alloc(self, n: int) -> list[int]:
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            raise OutOfPages(f"asked for {n} pages, {len(self._free)} free")
        if n == 0:
            return []
        out = self._free[-n:]
        del self._free[-n:]
        out.reverse()
        for p in out:
            self._is_free[p] = 0
        return out

    def free(self, pages: list[int]) -> None:
        """Return pages; freeing a page twice is a bookkeeping bug and raises at once."""
        for p in pages:
            if self._is_free[p]:
                raise RuntimeError(f"page {p} freed twice")
            self._is_free[p] = 1
        self._free.extend(reversed(pages))
