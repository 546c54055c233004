"""The engine: model, KV pool, radix cache and scheduler wired into a step loop.

`step()` is the whole loop body: schedule, launch the forward pass and sampling, feed the sampled
tokens back, apply stop strings. Servers call it from their own loop; the offline `LLM` calls it
until done. With `overlap` (the default on one rank), a call schedules and launches the next step
before it reads the tokens of the one before, so the host's work hides behind the device's: a
pending token reaches its next step on the device, and a request that ends on it has run one
step too many, whose token is dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoTokenizer

from ..core.kv_events import KVEvent
from ..core.pages import PageAllocator
from ..core.radix_cache import RadixCache
from ..core.request import Request
from ..core.sampling_params import SamplingParams
from ..core.scheduler import Scheduler, SchedulerOutput
from ..core.step_stats import PassSplit, StepMeter, split_pass
from .config import EngineConfig
from .kv_pool import page_bytes
from .model.presets import is_random
from .model_runner import LaunchedStep
from .parallel import TensorParallel
from .rank import build_runner, load_rank_model, model_config_of, resolve_dtype
from .sampler import Sampler
from .tp_ranks import TPRanks, rank_device

GIB = 1 << 30
CPU_KV_BUDGET = GIB  # KV memory on a CPU when neither kv_cache_gib nor num_pages is set
# Tokens decoded beyond the longest stop string's length when looking for it in the output's tail:
# a byte-level tokenizer may need up to 4 tokens for one UTF-8 character, so the tail starts at a
# whole character.
STOP_TAIL_EXTRA_TOKENS = 4


class InvalidPrompt(ValueError):
    """The prompt holds token ids outside the vocabulary, or is empty."""


def _in_vocabulary(ids: list, vocab: int) -> bool:
    """Whether every id is an integer in [0, vocab), checked in C: the engine admits requests
    between steps, and a Python loop over a 100k-token prompt would hold the device for ms."""
    try:
        arr = np.array(ids)  # Python ints become int64; floats, strings, nested lists or huge ints do not
    except ValueError:  # ragged nesting
        return False
    return arr.ndim == 1 and arr.dtype == np.int64 and int(arr.min()) >= 0 and int(arr.max()) < vocab


def _num_pages(config: EngineConfig, bytes_per_page: int, device: torch.device) -> int:
    if config.num_pages is not None:
        return config.num_pages
    if config.kv_cache_gib is not None:
        budget = config.kv_cache_gib * GIB
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = free - (1 - config.gpu_memory_utilization) * total
    else:
        budget = CPU_KV_BUDGET
    if budget < bytes_per_page:
        raise RuntimeError(f"no memory left for the KV cache on {device} (budget {budget / GIB:.2f} GiB); "
                           "set kv_cache_gib or num_pages, or free the device")
    return int(budget // bytes_per_page)


@dataclass
class _InFlight:
    """A launched step: what was scheduled, its tokens on their way, its pass for the meter."""

    out: SchedulerOutput
    launched: LaunchedStep
    split: PassSplit
    started: float  # perf_counter at launch


class LLMEngine:
    def __init__(self, config: EngineConfig, clock: Callable[[], float] = time.monotonic,
                 on_kv_event: Callable[[KVEvent], None] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.model_config = mc = model_config_of(config)
        self.dtype = resolve_dtype(config, mc)
        # A random-weight preset is a real architecture without files: no tokenizer.
        self.tokenizer = None if is_random(config.model) else AutoTokenizer.from_pretrained(config.model)
        tokenizer_eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_token_ids = frozenset(mc.eos_token_ids) or frozenset(
            [tokenizer_eos] if tokenizer_eos is not None else [])
        torch.manual_seed(config.seed)
        # The other ranks of a tensor-parallel replica: started, joined, then each loads its shard.
        self.ranks = TPRanks(config) if config.tensor_parallel_size > 1 else None
        tp = self.ranks.tp if self.ranks else TensorParallel()
        self.device = rank_device(config, 0)
        model = load_rank_model(config, tp, self.device)
        local = model.config
        num_pages = _num_pages(config, page_bytes(local.num_layers, config.page_size, local.num_kv_heads,
                                                  local.head_dim, self.dtype), self.device)
        if self.ranks:
            self.ranks.start(num_pages)
        self.allocator = PageAllocator(num_pages, config.page_size)
        self.cache = RadixCache(self.allocator, clock, on_kv_event)
        sched_config = dataclasses.replace(config.scheduler,
                                           max_model_len=mc.context_window(config.scheduler.max_model_len))
        self.scheduler = Scheduler(sched_config, self.allocator, self.cache, clock)
        self.runner = build_runner(config, model, num_pages, self.device, Sampler(self.device))
        if self.ranks:
            self.runner.broadcast = self.ranks.broadcast
        self.model = self.runner.model
        self.kv_pool = self.runner.backend.pool
        self._ids = itertools.count()
        self._requests: dict[str, Request] = {}
        self.meter = StepMeter()  # pass times, for the router's calibration
        # Sampled tokens live only on rank 0's device, so other ranks could not take pending ones.
        # (Changed only while `has_work` is False.)
        self.overlap = config.overlap and self.ranks is None
        self._in_flight: _InFlight | None = None
        self._last_done = 0.0  # when the last step's tokens were seen (perf_counter)

    def close(self) -> None:
        """Stop the other ranks of a tensor-parallel replica (a no-op for one rank)."""
        if self.ranks is not None:
            self.ranks.stop()
            self.ranks = None

    # ------------------------------------------------------------------ requests

    def add_request(self, prompt_token_ids: list[int], sampling: SamplingParams,
                    request_id: str | None = None) -> Request:
        """Queue a request; raises a ValueError subclass on bad input, changing nothing."""
        sampling.validate()
        ids = list(prompt_token_ids)
        vocab = self.model_config.vocab_size
        if not ids:
            raise InvalidPrompt("prompt is empty")
        if not _in_vocabulary(ids, vocab):
            raise InvalidPrompt(f"prompt token ids must be integers in [0, {vocab})")
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if sampling.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model has none")
        req = Request(request_id, ids, sampling, self.clock(), self.eos_token_ids)
        self.scheduler.add_request(req)
        self._requests[request_id] = req
        return req

    def abort(self, request_id: str) -> None:
        req = self._requests.pop(request_id, None)
        if req is not None:
            self.scheduler.abort(req)
            self.runner.sampler.release(request_id)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or self._in_flight is not None

    # ------------------------------------------------------------------ the loop

    def step(self) -> list[Request]:
        """Run one scheduler step; return the requests that received a token (finished or not):
        with `overlap`, those of the step launched by the call before."""
        out = self.scheduler.schedule()
        launched = None if out.is_empty else self._launch(out)
        if not self.overlap:
            return self._take(launched) if launched is not None else []
        earlier, self._in_flight = self._in_flight, launched
        return self._take(earlier) if earlier is not None else []

    def _launch(self, out: SchedulerOutput) -> _InFlight:
        started = time.perf_counter()
        flight = _InFlight(out, self.runner.launch(out), split_pass(out), started)
        self.scheduler.advance(out)
        return flight

    def _take(self, flight: _InFlight) -> list[Request]:
        """Wait for a launched step's tokens and feed them back."""
        sampled = self.runner.collect(flight.launched)
        done = time.perf_counter()
        # The device starts a step when it is launched or when the one before it ends.
        self.meter.record_split(flight.split, done - max(flight.started, self._last_done))
        self._last_done = done
        served = self.scheduler.resolve(flight.out, sampled)
        for req in served:
            if not req.is_finished and req.sampling.stop and self._hit_stop_string(req):
                self.scheduler.finish(req, "stop")
            if req.is_finished:
                self._requests.pop(req.request_id, None)
                self.runner.sampler.release(req.request_id)
        return served

    # ------------------------------------------------------------------ text

    def decode(self, req: Request) -> str:
        """The output text, cut before the first stop string ("" for a model without tokenizer)."""
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(req.output_token_ids,
                                     skip_special_tokens=req.sampling.skip_special_tokens)
        cut = min((i for s in req.sampling.stop if (i := text.find(s)) >= 0), default=len(text))
        return text[:cut]

    def _hit_stop_string(self, req: Request) -> bool:
        # Only the tail can newly contain a stop string: decode enough tokens to cover the longest.
        longest = max(len(s) for s in req.sampling.stop)
        tail = self.tokenizer.decode(req.output_token_ids[-(longest + STOP_TAIL_EXTRA_TOKENS):],
                                     skip_special_tokens=req.sampling.skip_special_tokens)
        return any(s in tail for s in req.sampling.stop)
