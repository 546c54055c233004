"""Continuous batching with chunked prefill over a paged KV pool and a radix prefix cache.

Each step spends a token budget: running decodes first (one token each), then the unfinished
prefills of running requests, then new admissions in the waiting policy's order, each taking a
chunk of whatever budget is left. A request is admitted only when pages for its whole prompt can
be had (evicting cached prefixes if needed), so prefill never stalls half-way; a decode that
needs a page when none is left preempts the most recently admitted request, which will be
recomputed later (its computed pages stay in the cache, so the recompute is mostly a hit).

The scheduler does no I/O and never touches tensors: the engine runs the forward pass that a
`SchedulerOutput` describes, the simulator times it with a cost model. A step's results come in
two halves: `advance` when it is launched (progress; each sampling chunk's token is pending) and
`resolve` when its tokens are known. An engine that launches the next step before reading the
last one's tokens schedules in between: a pending token is then its request's next input, and a
request that the pending token will end by length is not scheduled again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .local_policy import make_waiting_queue
from .pages import PageAllocator
from .radix_cache import RadixCache
from .request import Request, Status
from .scheduler_config import SchedulerConfig


class RequestTooLong(ValueError):
    """The prompt cannot fit the context window or the KV pool."""


@dataclass(frozen=True)
class ScheduledChunk:
    """`num_tokens` tokens of `request` from position `start` run in this step; a chunk that
    reaches the request's last known token `samples` the next one."""

    request: Request
    start: int
    num_tokens: int
    samples: bool

    @classmethod
    def of(cls, request: Request, num_tokens: int) -> ScheduledChunk:
        start = request.num_computed_tokens
        return cls(request, start, num_tokens, start + num_tokens == request.num_tokens)

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


class Scheduler:
    def __init__(self, config: SchedulerConfig, allocator: PageAllocator, cache: RadixCache,
                 clock: Callable[[], float]) -> None:
        self.config = config
        self.allocator = allocator
        self.cache = cache
        self.clock = clock
        self.waiting = make_waiting_queue(config.local_policy)
        self.running: list[Request] = []
        self.num_preemptions = 0
        ps = allocator.page_size
        self._watermark_pages = int(config.kv_watermark * allocator.num_pages)
        kv_tokens = (allocator.num_pages - self._watermark_pages) * ps
        self.max_model_len = min(config.max_model_len or kv_tokens, kv_tokens)

    # ------------------------------------------------------------------ intake

    def add_request(self, req: Request) -> None:
        if len(req.prompt_token_ids) == 0:
            raise RequestTooLong("prompt is empty")
        if len(req.prompt_token_ids) >= self.max_model_len:
            raise RequestTooLong(
                f"prompt has {len(req.prompt_token_ids)} tokens; this engine takes at most "
                f"{self.max_model_len - 1} (context window and KV pool)")
        self.waiting.add(req)

    def abort(self, req: Request) -> None:
        if not req.is_finished:
            self.finish(req, "abort")

    @property
    def has_work(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    # ------------------------------------------------------------------ scheduling

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        chunk_cap = self.config.max_prefill_chunk or budget
        for req in [r for r in self.running if not r.in_prefill]:
            if budget == 0:
                break
            if req.status is not Status.RUNNING:  # preempted by an earlier decode this step
                continue
            if req.num_pending_tokens and self._ends_at_length(req):
                continue
            if not self._grow_for_decode(req, out):
                continue
            out.chunks.append(ScheduledChunk.of(req, 1))
            budget -= 1
        for req in [r for r in self.running if r.in_prefill]:
            if budget == 0:
                break
            n = min(req.num_tokens - req.num_computed_tokens, budget, chunk_cap)
            out.chunks.append(ScheduledChunk.of(req, n))
            budget -= n
        if budget > 0 and len(self.waiting) and not out.preempted:
            self._admit(out, budget, chunk_cap)
        return out

    def _grow_for_decode(self, req: Request, out: SchedulerOutput) -> bool:
        """Make sure `req` has a slot for one more token, preempting others if it must."""
        need = self.allocator.pages_for(req.num_computed_tokens + 1) - len(req.pages)
        while need > 0 and not self._reserve(need):
            victim = self.running[-1]
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is req:
                return False
        if need > 0:
            req.pages.extend(self.allocator.alloc(need))
        return True

    def _admit(self, out: SchedulerOutput, budget: int, chunk_cap: int) -> None:
        order = self.waiting.ordered(self.cache.match_len)
        admitted = 0
        for req in order:
            if budget == 0 or len(self.running) >= self.config.max_running_requests:
                break
            tokens = req.all_token_ids
            match = self.cache.match_prefix(tokens[:-1])  # at least one token must be computed
            self.cache.lock(match.node)
            need = self.allocator.pages_for(len(tokens)) - len(match.pages)
            if not self._reserve(need + self._watermark_pages):
                self.cache.unlock(match.node)
                break
            req.pages = match.pages + self.allocator.alloc(need)
            req.cache_node = match.node
            req.num_computed_tokens = len(match.pages) * self.allocator.page_size
            if req.num_cached_tokens is None:
                req.num_cached_tokens = req.num_computed_tokens
                self.cache.stats.record(len(tokens), req.num_computed_tokens)
            req.status = Status.RUNNING
            self.waiting.remove(req)
            self.running.append(req)
            n = min(len(tokens) - req.num_computed_tokens, budget, chunk_cap)
            out.chunks.append(ScheduledChunk.of(req, n))
            budget -= n
            admitted += 1
        self.waiting.admitted(admitted)

    def _reserve(self, pages: int) -> bool:
        """Ensure `pages` pages are free, evicting unlocked cache entries as needed."""
        short = pages - self.allocator.num_free
        if short > 0:
            self.cache.evict(short)
        return self.allocator.num_free >= pages

    # ------------------------------------------------------------------ results

    def update(self, out: SchedulerOutput, sampled: dict[Request, int]) -> list[Request]:
        """Record a finished step (`advance`, then `resolve`); return the requests it finished."""
        self.advance(out)
        return [r for r in self.resolve(out, sampled) if r.is_finished]

    def advance(self, out: SchedulerOutput) -> None:
        """Record a launched step's progress; each chunk that samples owes its request a token."""
        for chunk in out.chunks:
            req = chunk.request
            if req.status is not Status.RUNNING:
                continue  # preempted by a later decode of the same step
            req.num_computed_tokens = chunk.end
            if chunk.samples:
                req.num_pending_tokens += 1

    def resolve(self, out: SchedulerOutput, sampled: dict[Request, int]) -> list[Request]:
        """Take in an advanced step's tokens; return the requests that received one."""
        now = self.clock()
        served = []
        for chunk in out.chunks:
            req = chunk.request
            if not chunk.samples or req.is_finished or not req.num_pending_tokens:
                continue  # ended since the step was launched, or not advanced: its token is void
            was_prefill = chunk.num_tokens > 1 or not req.output_token_ids
            token = sampled[req]
            req.num_pending_tokens -= 1
            req.output_token_ids.append(token)
            served.append(req)
            if req.first_token_time is None:
                req.first_token_time = now
            reason = self._stop_reason(req, token)
            if reason is not None:
                self.finish(req, reason)
            elif was_prefill and req.status is Status.RUNNING:
                self._cache_computed(req)  # share the prompt with requests arriving meanwhile
        return served

    def _stop_reason(self, req: Request, token: int) -> str | None:
        sp = req.sampling
        if token in sp.stop_token_ids or (not sp.ignore_eos and token in req.eos_token_ids):
            return "stop"
        if len(req.output_token_ids) >= sp.max_tokens or req.num_resolved_tokens >= self.max_model_len:
            return "length"
        return None

    def _ends_at_length(self, req: Request) -> bool:
        """Whether `req` stops by length once its pending tokens are known."""
        outputs = len(req.output_token_ids) + req.num_pending_tokens
        return outputs >= req.sampling.max_tokens or req.num_tokens >= self.max_model_len

    def finish(self, req: Request, reason: str) -> None:
        """End a request (also used by the engine for stop strings): a running one, or one
        preempted while a token of its was pending, which that token ended."""
        if req.status is Status.WAITING:
            self.waiting.remove(req)
        else:
            self.running.remove(req)
            self._release(req)
        self._finish(req, reason)

    def _finish(self, req: Request, reason: str) -> None:
        req.num_pending_tokens = 0  # tokens of steps launched after the end are void
        req.status = Status.FINISHED
        req.finish_reason = reason
        req.finish_time = self.clock()

    # ------------------------------------------------------------------ KV bookkeeping

    def _cache_computed(self, req: Request) -> None:
        """Hand the full computed pages of `req` to the radix cache and lock them."""
        full = req.num_computed_tokens // self.allocator.page_size
        tokens = req.all_token_ids[: full * self.allocator.page_size]
        result = self.cache.insert(tokens, req.pages[:full])
        self.cache.lock(result.node)
        if req.cache_node is not None:
            self.cache.unlock(req.cache_node)
        req.pages[:full] = result.pages
        req.cache_node = result.node

    def _release(self, req: Request) -> None:
        """Cache what `req` computed, then drop its locks and the pages it still owns. K/V that a
        launched step is still writing counts as computed (it will be there before any later
        step reads it), but only for known tokens. A pending token stays: a preempted request
        keeps the token its last step sampled, as it would have had it been read before."""
        req.num_computed_tokens = min(req.num_computed_tokens, req.num_resolved_tokens)
        self._cache_computed(req)
        owned = req.pages[req.num_computed_tokens // self.allocator.page_size:]
        self.cache.unlock(req.cache_node)
        self.allocator.free(owned)
        req.pages, req.cache_node = [], None

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        req.status = Status.WAITING
        self.waiting.add(req)
