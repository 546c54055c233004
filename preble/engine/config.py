"""Engine configuration: one object, every default documented here."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from ..core.pages import DEFAULT_PAGE_SIZE
from ..core.scheduler_config import SchedulerConfig

LOAD_FORMATS = ("auto", "dummy")


@dataclass(frozen=True)
class EngineConfig:
    model: str  # Hugging Face folder: config.json, *.safetensors, tokenizer files
    # auto: the folder's *.safetensors | dummy: the folder's architecture (config.json) with random
    # weights drawn from `seed`, as `random:NAME` models get, reading no weight files
    load_format: str = "auto"
    device: str = "cpu"
    dtype: str | None = None  # float32 | bfloat16 | float16; default: float32 on CPU, else the checkpoint's half type
    page_size: int = DEFAULT_PAGE_SIZE  # token slots per KV page; the prefix cache shares whole pages
    num_pages: int | None = None  # KV pool size; default: from the memory budget below
    kv_cache_gib: float | None = None  # KV pool memory; default: 1 GiB on CPU, else from gpu_memory_utilization
    gpu_memory_utilization: float = 0.85  # share of the GPU memory weights + KV pool may take
    attention_backend: str | None = None  # torch_sdpa | triton; default: triton on CUDA, torch_sdpa on CPU
    fused_ops: bool = True  # Triton kernels for norms, RoPE and SiLU-mul (CUDA only)
    cuda_graph: bool = True  # capture decode steps as CUDA graphs (triton backend on CUDA only)
    cuda_graph_max_batch: int = 256  # largest decode batch run as a graph
    # largest step with prompt tokens run as piecewise CUDA graphs (attention eager between the
    # pieces; `piecewise_graphs.py`); 0: such steps run eagerly. One rank, CUDA only. 512: a
    # 128-token prompt's first token in 8.0 ms against 14.8 eager on an H100
    # (results/engine/h100_prefill_profile_5247459.json); larger steps are compute-bound.
    piecewise_graph_max_tokens: int = 512
    # launch each step before reading the last one's tokens, so the host's scheduling and input
    # preparation run while the device works (one rank only; tensor parallel replicas step in turn)
    overlap: bool = True
    seed: int = 0  # seeds the RNG of requests that bring no seed of their own
    tensor_parallel_size: int = 1  # ranks (GPUs, or CPU processes) one replica's model is split over
    tensor_parallel_timeout_s: float = 300.0  # a collective waiting this long (a rank died) fails the engine
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")

    @classmethod
    def from_options(cls, model: str, **options) -> EngineConfig:
        """Build from flat keyword options; scheduler fields may be given at the top level."""
        engine_keys = {f.name for f in fields(cls)} - {"model", "scheduler"}
        sched_keys = {f.name for f in fields(SchedulerConfig)}
        unknown = set(options) - engine_keys - sched_keys - {"scheduler"}
        if unknown:
            raise TypeError(f"unknown engine options {sorted(unknown)}")
        scheduler = replace(options.pop("scheduler", SchedulerConfig()),
                            **{k: options.pop(k) for k in list(options) if k in sched_keys})
        return cls(model=str(model), scheduler=scheduler, **options)
