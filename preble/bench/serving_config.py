"""`preble bench serving`'s configuration, apart from the benchmark (preble/bench/serving.py) so
that the command line reads its defaults from here and still starts fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.config import EngineConfig


@dataclass(frozen=True)
class ServingBenchConfig:
    model: str | None = None  # HF folder; None: a random-weight folder of `preset`, served with --load-format dummy
    preset: str = "llama3-8b"
    preset_overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. num_layers for a smoke run
    url: str | None = None  # measure this running server instead of starting `preble serve`
    device: str = "cuda"
    worker_args: tuple[str, ...] = ()  # further `preble worker` options
    # KV memory of the served worker and of the in-process engine alike; None: the engine's default
    kv_cache_gib: float | None = None
    num_pages: int | None = None
    # the served worker's and the in-process engine's (EngineConfig's; e.g. 512 to measure them)
    piecewise_graph_max_tokens: int = EngineConfig.piecewise_graph_max_tokens
    in_process: bool = True  # also measure the engine in this process
    prompt_tokens: int = 128
    cached_prefix: int = 8192
    output_tokens: int = 256
    concurrency: tuple[int, ...] = (1, 8, 64, 256)
    ttft_repeats: int = 20
    client_processes: int = 8  # concurrent requests are sent from this many processes (bench/serving_clients.py)
    vocab_cap: int = 30000  # prompt token ids are drawn below this
    seed: int = 0
    startup_timeout_s: float = 900.0
    server_log: str | None = None  # keep the `preble serve` log of the served half here


# Sizes of a smoke run that a CPU finishes in a few minutes (the CLI's --quick).
QUICK = dict(preset="llama3-8b", device="cpu", prompt_tokens=16, cached_prefix=256, output_tokens=8,
             concurrency=(1, 4), ttft_repeats=3, client_processes=2,
             preset_overrides={"num_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
                               "num_kv_heads": 2, "head_dim": 16},
             num_pages=512)
