"""`preble profile`: measure one engine's forward passes and fit the cost model to them.

Prefill is timed over (new tokens, cached tokens) and decode steps over (batch, context); both
linear forms of `CostModel` are fitted by least squares (a term whose fit comes out negative is
dropped, so every cost stays non-negative), and the fit's relative errors are reported with the
samples, so a reader can judge the model the router and the simulator will use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.cost_model import CostModel
from ..core.pages import DEFAULT_PAGE_SIZE
from ..core.scheduler_config import SchedulerConfig
from ..engine.config import EngineConfig
from ..engine.engine import LLMEngine
from .engine import environment
from .engine_driver import EngineDriver


@dataclass(frozen=True)
class ProfileConfig:
    model: str = "random:llama3-8b"
    device: str = "cuda"
    dtype: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    new_tokens: tuple[int, ...] = (32, 128, 512, 2048, 8192)
    cached_tokens: tuple[int, ...] = (0, 2048, 8192)
    decode_batches: tuple[int, ...] = (1, 8, 32, 64, 128)
    decode_contexts: tuple[int, ...] = (256, 1024, 4096)
    decode_steps: int = 8
    max_kv_tokens: int = 300_000  # skip decode points whose KV would not fit (8B on 80 GB: ~390k)
    vocab_cap: int = 30000
    seed: int = 0
    extra: dict = field(default_factory=dict)  # further EngineConfig options


# Measurement grids by name (`preble profile --grid`): the defaults above suit a datacenter GPU.
GRIDS: dict[str, dict] = {
    "gpu": {},
    "cpu": dict(new_tokens=(16, 64, 256, 1024), cached_tokens=(0, 512), decode_batches=(1, 4, 8),
                decode_contexts=(128, 512), decode_steps=4, max_kv_tokens=8192),
    "quick": dict(new_tokens=(8, 32, 96), cached_tokens=(0, 64), decode_batches=(1, 4), decode_contexts=(32, 128),
                  decode_steps=3, max_kv_tokens=4096, extra={"num_pages": 512}),
}


class _Profiler:
    def __init__(self, cfg: ProfileConfig) -> None:
        self.cfg = cfg
        budget = max(max(cfg.new_tokens) + max(cfg.cached_tokens), max(cfg.decode_batches))
        self.engine = LLMEngine(EngineConfig(
            model=cfg.model, device=cfg.device, dtype=cfg.dtype, page_size=cfg.page_size, seed=cfg.seed,
            scheduler=SchedulerConfig(max_num_batched_tokens=budget, max_running_requests=max(cfg.decode_batches)),
            **cfg.extra))
        self.driver = EngineDriver(self.engine, cfg.seed, cfg.vocab_cap)

    def drain(self, keep_cache: bool = False) -> None:
        """Finish every request; then empty the cache unless told to keep it."""
        self.driver.run_until_done()
        if not keep_cache:
            self.driver.clear_cache()

    def prefill(self, new: int, cached: int) -> float:
        """Seconds of the one step that prefills `new` tokens after a cached `cached`-token prefix."""
        d = self.driver
        prefix = d.tokens(cached)
        if cached:
            d.add(prefix, 1)
            self.drain(keep_cache=True)
        req = d.add(prefix + d.tokens(new), 1)
        elapsed = d.timed_steps(1)
        self.drain()
        assert req.output_token_ids and req.num_cached_tokens >= cached - self.cfg.page_size
        return elapsed

    def decode(self, batch: int, context: int) -> float:
        """Seconds per decode step of `batch` sequences of about `context` tokens each."""
        d, steps = self.driver, self.cfg.decode_steps
        d.decode_batch(batch, context, steps)
        elapsed = d.timed_steps(steps)
        self.drain()
        return elapsed


def _fit(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative error (a 16-token prefill matters as much as an 8k one), with
    non-negative coefficients (a negative term is dropped and the rest refitted)."""
    w_rows, w_y = rows / y[:, None], np.ones_like(y)
    keep = np.ones(rows.shape[1], dtype=bool)
    while True:
        coef = np.zeros(rows.shape[1])
        coef[keep] = np.linalg.lstsq(w_rows[:, keep], w_y, rcond=None)[0]
        if (coef[keep] >= 0).all() or keep.sum() == 1:
            return np.clip(coef, 0.0, None)
        keep &= coef >= 0


def _errors(pred: np.ndarray, y: np.ndarray) -> dict:
    rel = np.abs(pred - y) / y
    return {"mean_rel_error": float(rel.mean()), "max_rel_error": float(rel.max())}


def fit(prefill: list[dict], decode: list[dict], description: str) -> tuple[CostModel, dict]:
    """Fit both forms to measured samples; return the model and its relative errors."""
    pn = np.array([[1.0, s["new"], s["new"] * (s["new"] + s["cached"])] for s in prefill])
    py = np.array([s["seconds"] for s in prefill])
    dn = np.array([[1.0, s["batch"], s["batch"] * s["context"]] for s in decode])
    dy = np.array([s["seconds"] for s in decode])
    pc, dc = _fit(pn, py), _fit(dn, dy)
    model = CostModel(*map(float, (*pc, *dc)), description=description)
    return model, {"method": "least squares on relative error, non-negative terms",
                   "prefill": _errors(pn @ pc, py), "decode": _errors(dn @ dc, dy)}


def run(cfg: ProfileConfig) -> dict:
    p = _Profiler(cfg)
    p.prefill(min(cfg.new_tokens), 0)  # warm-up: compile kernels, capture graphs
    prefill = [{"new": n, "cached": c, "seconds": min(p.prefill(n, c) for _ in range(2))}
               for c in cfg.cached_tokens for n in cfg.new_tokens]
    decode = [{"batch": b, "context": ctx, "seconds": p.decode(b, ctx)}
              for ctx in cfg.decode_contexts for b in cfg.decode_batches if b * ctx <= cfg.max_kv_tokens]
    meta = environment(p.engine.device)
    model, errors = fit(prefill, decode, f"fitted by preble profile: {cfg.model} on {meta['device']}")
    return {"cost_model": model.to_dict(), "fit": errors, "samples": {"prefill": prefill, "decode": decode},
            "config": asdict(cfg), "meta": meta}
