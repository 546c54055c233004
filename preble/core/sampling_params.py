"""Per-request sampling parameters, validated where the request enters the system.

One type from the HTTP frontend to the engine: a msgspec struct, so it crosses from a worker's
frontend to its engine process as it is (and is checked again when decoded there).
"""

from __future__ import annotations

import msgspec


class InvalidSamplingParams(ValueError):
    """A sampling parameter is out of range; the message names it."""


_INT64 = 1 << 63  # seeds and token ids cross process boundaries as signed 64-bit integers


class SamplingParams(msgspec.Struct):
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0  # 0 or negative: no top-k cut
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = []
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise InvalidSamplingParams(msg)

        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.temperature < 0.0:
            bad(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.top_k, int) and -_INT64 <= self.top_k < _INT64):
            bad(f"top_k must be a 64-bit integer, got {self.top_k!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop must be a list of non-empty strings")
        if any(not isinstance(t, int) or not 0 <= t < _INT64 for t in self.stop_token_ids):
            bad("stop_token_ids must be non-negative 64-bit integers")
        if self.seed is not None and not (isinstance(self.seed, int) and -_INT64 <= self.seed < _INT64):
            bad(f"seed must be a 64-bit integer, got {self.seed!r}")
