"""Builds what runs a replica's forward passes on one rank: its share of the model (loaded or
random), its share of the KV pool, the attention backend and the CUDA graphs (decode steps whole,
steps with prompt tokens in pieces).

Rank 0's engine and the other ranks of a tensor-parallel replica build theirs with the same code,
so their kernels, pools and graphs match step for step.
"""

from __future__ import annotations

import torch

from ..models.config import DTYPES, ModelConfig
from .attention import make_backend
from .config import EngineConfig
from .kv_pool import KVPool
from .model.llama import LlamaForCausalLM
from .model.loader import build_model, load_model
from .model.presets import init_random_, is_random, preset
from .model_runner import ModelRunner
from .parallel import TensorParallel
from .sampler import Sampler


def model_config_of(config: EngineConfig) -> ModelConfig:
    return preset(config.model) if is_random(config.model) else ModelConfig.from_dir(config.model)


def resolve_dtype(config: EngineConfig, model_config: ModelConfig) -> torch.dtype:
    if config.dtype is not None:
        if config.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
        return getattr(torch, config.dtype)
    if torch.device(config.device).type == "cpu":
        return torch.float32
    return model_config.torch_dtype if model_config.dtype != "float32" else torch.bfloat16


def load_rank_model(config: EngineConfig, tp: TensorParallel, device: torch.device) -> LlamaForCausalLM:
    """This rank's share of the model, loaded first: the KV pool gets the memory it leaves."""
    mc = model_config_of(config)
    dtype = resolve_dtype(config, mc)
    if is_random(config.model) or config.load_format == "dummy":  # random weights: no weight files read
        model = build_model(mc, device, dtype, tp)
        init_random_(model, config.seed + tp.rank)
        return model
    return load_model(config.model, mc, device, dtype, tp)


def build_runner(config: EngineConfig, model: LlamaForCausalLM, num_pages: int, device: torch.device,
                 sampler: Sampler | None) -> ModelRunner:
    """This rank's runner over a pool of `num_pages` pages (plus a spare one, where CUDA graphs
    park their padding rows)."""
    dtype = next(model.parameters()).dtype
    local = model.config
    pool = KVPool(local.num_layers, num_pages + 1, config.page_size, local.num_kv_heads, local.head_dim, dtype,
                  device)
    on_cuda = device.type == "cuda"
    if on_cuda and config.fused_ops:
        model.use_fused_ops()
    backend = make_backend(config.attention_backend or ("triton" if on_cuda else "torch_sdpa"), pool)
    graphs = piecewise = None
    if on_cuda and config.cuda_graph:
        graphs = _capture_graphs(config, model, backend, spare_page=num_pages)
        piecewise = _capture_piecewise(config, model, backend, spare_slot=num_pages * config.page_size)
    return ModelRunner(model, backend, sampler, config.page_size, device, graphs, piecewise)


def _capture_graphs(config: EngineConfig, model: LlamaForCausalLM, backend, spare_page: int):
    """Decode CUDA graphs, for the Triton backend (whose plans can live in static buffers)."""
    from .attention.triton_backend import TritonBackend
    from .cuda_graph import CudaGraphConfig, DecodeGraphs

    if not isinstance(backend, TritonBackend):
        return None
    sched = config.scheduler
    max_len = model.config.context_window(sched.max_model_len)
    graphs = DecodeGraphs(model, backend, CudaGraphConfig(), min(config.cuda_graph_max_batch, sched.max_running_requests),
                          -(-max_len // config.page_size), spare_page)
    graphs.capture()
    return graphs


def _capture_piecewise(config: EngineConfig, model: LlamaForCausalLM, backend, spare_slot: int):
    """Piecewise graphs for short steps with prompt tokens; one rank only (the other ranks of a
    tensor-parallel replica would have to replay the same pieces, which no step message says)."""
    from .piecewise_graphs import PiecewiseGraphConfig, PiecewiseGraphs

    max_tokens = min(config.piecewise_graph_max_tokens, config.scheduler.max_num_batched_tokens)
    sizes = PiecewiseGraphConfig()
    if config.tensor_parallel_size > 1 or max_tokens < min(sizes.token_sizes):
        return None
    graphs = PiecewiseGraphs(model, backend, sizes, max_tokens, spare_slot)
    graphs.capture()
    return graphs
