"""The engine: model, KV pool, radix cache and scheduler wired into a step loop.

`step()` is the whole loop body: schedule, run the forward pass, feed the sampled tokens back,
apply stop strings. Servers call it from their own loop; the offline `LLM` calls it until done.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable

import torch
from transformers import AutoTokenizer

from ..core.kv_events import KVEvent
from ..core.pages import PageAllocator
from ..core.radix_cache import RadixCache
from ..core.request import Request
from ..core.sampling_params import SamplingParams
from ..core.scheduler import Scheduler
from .attention import make_backend
from .config import EngineConfig
from .kv_pool import KVPool, page_bytes
from .model.config import DTYPES, ModelConfig
from .model.loader import build_model, load_model
from .model.presets import init_random_, is_random, preset
from .model_runner import ModelRunner
from .sampler import Sampler

GIB = 1 << 30


class InvalidPrompt(ValueError):
    """The prompt holds token ids outside the vocabulary, or is empty."""


def _resolve_dtype(config: EngineConfig, model_config: ModelConfig) -> torch.dtype:
    if config.dtype is not None:
        if config.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
        return getattr(torch, config.dtype)
    if torch.device(config.device).type == "cpu":
        return torch.float32
    return model_config.torch_dtype if model_config.dtype != "float32" else torch.bfloat16


def _num_pages(config: EngineConfig, bytes_per_page: int, device: torch.device) -> int:
    if config.num_pages is not None:
        return config.num_pages
    if config.kv_cache_gib is not None:
        budget = config.kv_cache_gib * GIB
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = free - (1 - config.gpu_memory_utilization) * total
    else:
        budget = GIB
    if budget < bytes_per_page:
        raise RuntimeError(f"no memory left for the KV cache on {device} (budget {budget / GIB:.2f} GiB); "
                           "set kv_cache_gib or num_pages, or free the device")
    return int(budget // bytes_per_page)


class LLMEngine:
    def __init__(self, config: EngineConfig, clock: Callable[[], float] = time.monotonic,
                 on_kv_event: Callable[[KVEvent], None] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        if is_random(config.model):  # a real architecture with random weights: no files, no tokenizer
            self.model_config = mc = preset(config.model)
            self.dtype = _resolve_dtype(config, mc)
            self.tokenizer = None
            self.model = build_model(mc, self.device, self.dtype)
            init_random_(self.model, config.seed)
        else:
            self.model_config = mc = ModelConfig.from_dir(config.model)
            self.dtype = _resolve_dtype(config, mc)
            self.tokenizer = AutoTokenizer.from_pretrained(config.model)
            self.model = load_model(config.model, mc, self.device, self.dtype)
        tokenizer_eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_token_ids = frozenset(mc.eos_token_ids) or frozenset(
            [tokenizer_eos] if tokenizer_eos is not None else [])
        num_pages = _num_pages(config, page_bytes(mc.num_layers, config.page_size, mc.num_kv_heads,
                                                  mc.head_dim, self.dtype), self.device)
        # One page more than the allocator hands out: CUDA graphs park their padding rows there.
        self.kv_pool = KVPool(mc.num_layers, num_pages + 1, config.page_size, mc.num_kv_heads,
                              mc.head_dim, self.dtype, self.device)
        self.allocator = PageAllocator(num_pages, config.page_size)
        self.cache = RadixCache(self.allocator, clock, on_kv_event)
        sched_config = dataclasses.replace(config.scheduler,
                                           max_model_len=mc.context_window(config.scheduler.max_model_len))
        self.scheduler = Scheduler(sched_config, self.allocator, self.cache, clock)
        on_cuda = self.device.type == "cuda"
        if on_cuda and config.fused_ops:
            self.model.use_fused_ops()
        backend = make_backend(config.attention_backend or ("triton" if on_cuda else "torch_sdpa"), self.kv_pool)
        graphs = self._capture_graphs(backend, spare_page=num_pages) if on_cuda and config.cuda_graph else None
        self.runner = ModelRunner(self.model, backend, Sampler(self.device), config.page_size, self.device, graphs)
        self._ids = itertools.count()
        self._requests: dict[str, Request] = {}

    def _capture_graphs(self, backend, spare_page: int):
        """Decode CUDA graphs, for the Triton backend (whose plans can live in static buffers)."""
        from .attention.triton_backend import TritonBackend
        from .cuda_graph import CudaGraphConfig, DecodeGraphs

        if not isinstance(backend, TritonBackend):
            return None
        cfg = self.config
        graphs = DecodeGraphs(self.model, backend, CudaGraphConfig(),
                              min(cfg.cuda_graph_max_batch, cfg.scheduler.max_running_requests),
                              -(-self.scheduler.max_model_len // cfg.page_size), spare_page)
        graphs.capture()
        return graphs

    # ------------------------------------------------------------------ requests

    def add_request(self, prompt_token_ids: list[int], sampling: SamplingParams,
                    request_id: str | None = None) -> Request:
        """Queue a request; raises a ValueError subclass on bad input, changing nothing."""
        sampling.validate()
        ids = list(prompt_token_ids)
        vocab = self.model_config.vocab_size
        if not ids:
            raise InvalidPrompt("prompt is empty")
        if any(not isinstance(t, int) or t < 0 or t >= vocab for t in ids):
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
        return self.scheduler.has_work

    # ------------------------------------------------------------------ the loop

    def step(self) -> list[Request]:
        """Run one scheduler step; return the requests that received a token (finished or not)."""
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        sampled = self.runner.execute(out)
        self.scheduler.update(out, sampled)
        for req in sampled:
            if not req.is_finished and req.sampling.stop and self._hit_stop_string(req):
                self.scheduler.finish(req, "stop")
            if req.is_finished:
                self._requests.pop(req.request_id, None)
                self.runner.sampler.release(req.request_id)
        return list(sampled)

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
        tail = self.tokenizer.decode(req.output_token_ids[-(longest + 4):],
                                     skip_special_tokens=req.sampling.skip_special_tokens)
        return any(s in tail for s in req.sampling.stop)
