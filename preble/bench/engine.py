"""`preble bench engine`: one engine's speed against the device's own ceilings, in one run.

Measures the device's matmul peak and copy bandwidth first, then the engine's prefill throughput
(and MFU), time to first token with and without a cached prefix, decode throughput against the
bandwidth floor (weights + KV bytes per step), and offline throughput on a shared-prefix batch.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import torch

from ..core.pages import DEFAULT_PAGE_SIZE
from ..core.scheduler_config import SchedulerConfig
from ..engine.config import EngineConfig
from ..engine.engine import LLMEngine
from .engine_driver import EngineDriver, sync_device
from .provenance import source_revision


@dataclass(frozen=True)
class EngineBenchConfig:
    model: str = "random:llama3-8b"
    device: str = "cuda"
    dtype: str | None = None
    attention_backend: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    prefill_lengths: tuple[int, ...] = (512, 2048, 8192)
    cached_prefix: int = 8192  # TTFT with this many cached tokens ...
    new_tokens: int = 128  # ... followed by this many new ones
    decode_batches: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    decode_context: int = 1024
    decode_steps: int = 32
    shared_prefix: int = 4096  # offline batch: every request shares this prefix
    shared_batch: int = 64
    shared_suffix: int = 64
    shared_output: int = 128
    vocab_cap: int = 30000  # prompt token ids are drawn below this
    seed: int = 0
    extra: dict = field(default_factory=dict)  # further EngineConfig options


# Sizes of a smoke run that a CPU finishes in a minute (the CLI's --quick).
QUICK = dict(prefill_lengths=(64,), cached_prefix=128, new_tokens=16, decode_batches=(1, 2), decode_context=64,
             decode_steps=4, shared_prefix=64, shared_batch=4, shared_suffix=8, shared_output=4,
             extra={"num_pages": 256})


def device_ceilings(device: torch.device, dtype: torch.dtype) -> dict:
    """Measured matmul rate (TFLOP/s) and copy bandwidth (GB/s, bytes read + written)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 10
    sync_device(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync_device(device)
    tflops = 2 * n**3 * reps / (time.perf_counter() - t) / 1e12
    nbytes = (4 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes // 2, dtype=torch.int16, device=device).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync_device(device)
    t = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync_device(device)
    gbps = 2 * nbytes * reps / (time.perf_counter() - t) / 1e9
    del a, b, src, dst
    return {"matmul_tflops": tflops, "copy_gbps": gbps}


def _weights_bytes(engine: LLMEngine) -> int:
    return sum(p.numel() * p.element_size() for p in engine.model.parameters())


def _matmul_flops_per_token(engine: LLMEngine) -> float:
    """2 x (parameters used in matmuls per token): every weight except the embedding table."""
    emb = engine.model.model.embed_tokens.weight
    params = sum(p.numel() for p in engine.model.parameters() if p is not emb or engine.model_config.tie_word_embeddings)
    return 2.0 * params


def _attention_flops(engine: LLMEngine, new: int, cached: int) -> float:
    """Causal attention FLOPs of `new` tokens after `cached` ones (QK^T and PV, 2 FLOPs a MAC)."""
    mc = engine.model_config
    pairs = new * cached + new * (new + 1) / 2
    return 4.0 * pairs * mc.num_heads * mc.head_dim * mc.num_layers


def run(cfg: EngineBenchConfig) -> dict:
    device = torch.device(cfg.device)
    max_tokens_step = max(max(cfg.prefill_lengths), cfg.cached_prefix + cfg.new_tokens)
    ecfg = EngineConfig(model=cfg.model, device=cfg.device, dtype=cfg.dtype, page_size=cfg.page_size,
                        attention_backend=cfg.attention_backend, seed=cfg.seed,
                        scheduler=SchedulerConfig(max_num_batched_tokens=max_tokens_step,
                                                  max_running_requests=max(cfg.decode_batches + (cfg.shared_batch,))),
                        **cfg.extra)
    t = time.perf_counter()
    engine = LLMEngine(ecfg)
    init_s = time.perf_counter() - t
    ceilings = device_ceilings(device, engine.dtype)
    r = EngineDriver(engine, cfg.seed, cfg.vocab_cap)
    flops_tok = _matmul_flops_per_token(engine)
    result: dict = {"config": asdict(cfg), "init_s": init_s, "ceilings": ceilings,
                    "weights_gb": _weights_bytes(engine) / 1e9, "backend": type(engine.runner.backend).__name__}

    r.timed_first_token(r.tokens(64))  # warm-up: kernels compiled, graphs captured
    prefill = []
    for n in cfg.prefill_lengths:
        r.timed_first_token(r.tokens(n))
        secs = min(r.timed_first_token(r.tokens(n)) for _ in range(2))
        flops = flops_tok * n + _attention_flops(engine, n, 0)
        prefill.append({"tokens": n, "seconds": secs, "tokens_per_s": n / secs,
                        "mfu": flops / secs / (ceilings["matmul_tflops"] * 1e12)})
        r.clear_cache()
    result["prefill"] = prefill

    prefix = r.tokens(cfg.cached_prefix)
    r.timed_first_token(prefix)
    cached = min(r.timed_first_token(prefix + r.tokens(cfg.new_tokens)) for _ in range(3))
    cold = min(r.timed_first_token(r.tokens(cfg.new_tokens)) for _ in range(3))
    result["ttft"] = {"cached_prefix": cfg.cached_prefix, "new_tokens": cfg.new_tokens,
                      "with_cached_prefix_s": cached, "cold_s": cold, "ratio": cached / cold}
    r.clear_cache()

    mc = engine.model_config
    kv_bytes_per_token = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * engine.dtype.itemsize
    # A decode step reads every weight once, except the embedding table (one row per token).
    emb = engine.model.model.embed_tokens.weight
    weights_read = _weights_bytes(engine) - (0 if mc.tie_word_embeddings else emb.numel() * emb.element_size())
    decode = []
    for batch in cfg.decode_batches:
        reqs = r.decode_batch(batch, cfg.decode_context, cfg.decode_steps)
        before = sum(q.num_tokens for q in reqs)
        secs = r.timed_steps(cfg.decode_steps - 1, until_finished=reqs)
        context = (before + sum(q.num_tokens for q in reqs)) / 2 / batch
        r.run_until_done()
        floor_bytes = weights_read + batch * context * kv_bytes_per_token
        floor_s = floor_bytes / (ceilings["copy_gbps"] * 1e9)
        decode.append({"batch": batch, "step_ms": secs * 1e3, "tokens_per_s": batch / secs,
                       "floor_ms": floor_s * 1e3, "roofline_fraction": floor_s / secs})
        r.clear_cache()
    result["decode"] = decode

    prefix = r.tokens(cfg.shared_prefix)
    t = time.perf_counter()
    for _ in range(cfg.shared_batch):
        r.add(prefix + r.tokens(cfg.shared_suffix), cfg.shared_output)
    r.run_until_done()
    secs = time.perf_counter() - t
    result["shared_prefix_offline"] = {
        "requests": cfg.shared_batch, "prefix": cfg.shared_prefix, "suffix": cfg.shared_suffix,
        "output": cfg.shared_output, "seconds": secs,
        "output_tokens_per_s": cfg.shared_batch * cfg.shared_output / secs,
        "hit_ratio": engine.cache.stats.hit_ratio}
    result["meta"] = environment(device)
    return result


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__, **source_revision(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def markdown(result: dict) -> str:
    c, m = result["ceilings"], result["meta"]
    lines = [f"# Engine benchmark: {result['config']['model']} on {m['device']}", "",
             f"commit {m['commit']}, {m['date']}, torch {m['torch']}, backend {result['backend']}", "",
             f"Device ceilings measured in this run: matmul {c['matmul_tflops']:.1f} TFLOP/s, "
             f"copy {c['copy_gbps']:.0f} GB/s (read + write).", "",
             "| prefill tokens | ms | tokens/s | MFU |", "|---|---|---|---|"]
    lines += [f"| {p['tokens']} | {p['seconds'] * 1e3:.1f} | {p['tokens_per_s']:.0f} | {p['mfu']:.0%} |"
              for p in result["prefill"]]
    t = result["ttft"]
    lines += ["", f"TTFT of {t['new_tokens']} new tokens on a {t['cached_prefix']}-token cached prefix: "
                  f"{t['with_cached_prefix_s'] * 1e3:.1f} ms; cold {t['new_tokens']} tokens: {t['cold_s'] * 1e3:.1f} ms "
                  f"(ratio {t['ratio']:.2f}).", "",
              "| decode batch | step ms | tokens/s | floor ms | of roofline |", "|---|---|---|---|---|"]
    lines += [f"| {d['batch']} | {d['step_ms']:.2f} | {d['tokens_per_s']:.0f} | {d['floor_ms']:.2f} | "
              f"{d['roofline_fraction']:.0%} |" for d in result["decode"]]
    s = result["shared_prefix_offline"]
    lines += ["", f"Offline shared-prefix batch ({s['requests']} x [{s['prefix']} shared + {s['suffix']}] -> "
                  f"{s['output']}): {s['output_tokens_per_s']:.0f} output tokens/s, hit ratio {s['hit_ratio']:.0%}."]
    return "\n".join(lines) + "\n"
