"""A request's state as the scheduler sees it: tokens, progress, and the KV pages it holds."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .radix_cache import TreeNode
from .sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    arrival_time: float
    eos_token_ids: frozenset[int] = frozenset()
    output_token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    # KV state: the first `num_computed_tokens` tokens have K/V in `pages`; the leading pages up
    # to `cache_node` belong to the radix cache and are locked by this request.
    num_computed_tokens: int = 0
    # Tokens sampled by launched steps whose values have not reached the host yet (0-2): they
    # follow `output_token_ids`, count in `num_tokens`, and come in through `Scheduler.resolve`.
    num_pending_tokens: int = 0
    pages: list[int] = field(default_factory=list)
    cache_node: TreeNode | None = None
    num_cached_tokens: int | None = None  # prompt tokens served from the cache, first admission
    num_preemptions: int = 0
    finish_reason: str | None = None
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens so far, pending ones included: what scheduling counts."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_pending_tokens

    @property
    def num_resolved_tokens(self) -> int:
        """Tokens whose values are known: position `num_resolved_tokens` is the first pending one."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        """The known tokens (pending ones excluded)."""
        return self.prompt_token_ids + self.output_token_ids

    def token_ids(self, start: int, end: int) -> list[int]:
        """The known tokens of [start, end), without building the whole sequence (the per-step hot
        path)."""
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n:end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - n]

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def in_prefill(self) -> bool:
        """Whether tokens other than the newest one still lack K/V."""
        return self.num_tokens - self.num_computed_tokens > 1
