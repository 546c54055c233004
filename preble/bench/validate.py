"""Validate the simulator against real runs: the same requests at the same arrival times.

Live: a local `preble serve` cluster runs a token-id workload open loop. In-process (one
replica, e.g. a GPU with a random-weight model that has no tokenizer for the HTTP front end): one
engine is stepped in a loop that adds each request when its arrival time has passed, the way a
worker's loop does. The simulator then plays the requests that were answered at the same
arrival times, on replicas configured like the real ones (page size, KV pages, step budget,
local queue) with the cost model profiled on the same device. The report is the simulator's
relative error on the summary statistics.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.cost_model import CostModel
from ..core.pages import DEFAULT_PAGE_SIZE
from ..core.routing import DEFAULT_POLICY
from ..core.scheduler_config import SchedulerConfig
from ..sim.cluster import SimConfig, simulate
from ..sim.report import summarize
from .loadgen import LoadConfig, RequestRecord, arrival_times, run_load
from .local_cluster import LocalCluster
from .requests import load_request, sim_request
from .workloads import make_workload

if TYPE_CHECKING:
    from .engine_driver import EngineDriver

COMPARED = ("mean_latency", "p50_latency", "p99_latency", "mean_ttft", "p99_ttft", "mean_tpot", "hit_ratio")


@dataclass(frozen=True)
class ValidateConfig:
    cost_model: str  # profiled on the device the workers run on, with their thread count
    model: str | None = None  # HF folder; None: the demo model
    device: str = "cpu"
    workers: int = 2
    policy: str = DEFAULT_POLICY
    workload: str = "shared_prefix"  # a token-id workload, so the cluster and the simulator see the same ids
    params: dict = field(default_factory=lambda: dict(groups=6, system_len=384, question_len=48, output_len=24))
    num_requests: int = 150
    rate: float = 1.0
    page_size: int = DEFAULT_PAGE_SIZE
    num_pages: int | None = 256  # per worker; None: what the device's memory holds (in-process only)
    max_num_batched_tokens: int = 512
    local_policy: str = "preble"
    seed: int = 0

    def worker_args(self) -> list[str]:
        if self.num_pages is None:
            raise ValueError("a live cluster needs num_pages, so the simulator can match it")
        return ["--page-size", str(self.page_size), "--num-pages", str(self.num_pages),
                "--max-num-batched-tokens", str(self.max_num_batched_tokens),
                "--local-policy", self.local_policy]

    def sim_config(self, num_pages: int) -> SimConfig:
        return SimConfig(replicas=self.workers, policy=self.policy, page_size=self.page_size,
                         num_pages=num_pages, seed=self.seed,
                         scheduler=SchedulerConfig(max_num_batched_tokens=self.max_num_batched_tokens,
                                                   local_policy=self.local_policy))


def _relative(sim: float, real: float) -> float:
    return (sim - real) / real if real and not math.isnan(real) else math.nan


def _workload(cfg: ValidateConfig):
    wl = make_workload(cfg.workload, num_requests=cfg.num_requests, seed=cfg.seed, **cfg.params)
    if any(r.prompt_token_ids is None for r in wl.requests):
        raise ValueError(f"workload {cfg.workload!r} has text prompts; validation needs token ids")
    return wl


def run_live(cfg: ValidateConfig, on_done: Callable[[RequestRecord], None] | None = None
             ) -> tuple[list[RequestRecord], int]:
    """The workload on a local cluster; (records, KV pages per worker)."""
    from ..models.demo import ensure_demo_model

    wl = _workload(cfg)
    reqs = [load_request(r) for r in wl.requests]
    with LocalCluster(cfg.model or str(ensure_demo_model()), cfg.workers, cfg.policy, cfg.worker_args(),
                      cfg.device) as cluster:
        records = asyncio.run(run_load(reqs, LoadConfig(cluster.url, rate=cfg.rate, seed=cfg.seed),
                                       on_done=on_done))
    return records, cfg.num_pages


def run_in_process(cfg: ValidateConfig, on_done: Callable[[RequestRecord], None] | None = None
                   ) -> tuple[list[RequestRecord], int]:
    """The workload on one engine stepped in this process; (records, its KV pages). Its requests
    are sampled at the default temperature (the live run's load generator asks for greedy ones;
    either way they run to `max_tokens`)."""
    from ..engine.config import EngineConfig
    from ..engine.engine import LLMEngine
    from .engine_driver import EngineDriver

    if cfg.workers != 1:
        raise ValueError("an in-process run has one replica")
    wl = _workload(cfg)
    engine = LLMEngine(EngineConfig(
        model=cfg.model or "random:llama3-8b", device=cfg.device, page_size=cfg.page_size,
        num_pages=cfg.num_pages, seed=cfg.seed,
        scheduler=SchedulerConfig(max_num_batched_tokens=cfg.max_num_batched_tokens,
                                  local_policy=cfg.local_policy)))
    driver = EngineDriver(engine, cfg.seed)
    _warm_up(driver, max(len(r.prompt_token_ids) for r in wl.requests))
    times = arrival_times(wl.requests, LoadConfig("", rate=cfg.rate, seed=cfg.seed))
    arrivals = {r.request_id: t for r, t in zip(wl.requests, times)}
    records: list[RequestRecord] = []
    for req, start in driver.replay([sim_request(r, arrival=t) for r, t in zip(wl.requests, times)],
                                    greedy=False):
        at = arrivals[req.request_id]
        first, end = req.first_token_time - start, req.finish_time - start
        n = len(req.output_token_ids)
        rec = RequestRecord(req.request_id, at, first, end, first - at,
                            (end - first) / (n - 1) if n > 1 else None, end - at,
                            len(req.prompt_token_ids), req.num_cached_tokens or 0, n, "engine", "in-process")
        records.append(rec)
        if on_done is not None:
            on_done(rec)
    return records, engine.allocator.num_pages


def _warm_up(driver: EngineDriver, prompt_len: int) -> None:
    """Compile and autotune the kernels before the clock starts (a server is warm when its
    clients arrive): a fresh prefill, one on a cached prefix, a few decode steps; then an empty
    cache again."""
    engine = driver.engine
    vocab = engine.model_config.vocab_size
    fresh = [(7 * i + 3) % vocab for i in range(prompt_len)]
    for prompt in (fresh, fresh[: prompt_len // 2] + [(11 * i + 5) % vocab for i in range(prompt_len // 2)]):
        driver.add(prompt, 4, greedy=False)
        driver.run_until_done()
    engine.cache.clear()


def run(cfg: ValidateConfig, on_done: Callable[[RequestRecord], None] | None = None,
        in_process: bool = False) -> dict[str, Any]:
    records, num_pages = (run_in_process if in_process else run_live)(cfg, on_done)
    ok = [r for r in records if r.error is None]
    by_id = {r.request_id: r for r in _workload(cfg).requests}
    sim_reqs = [sim_request(by_id[r.request_id], arrival=r.arrival) for r in ok]
    sim_records = simulate(sim_reqs, cfg.sim_config(num_pages), CostModel.load(cfg.cost_model))
    real, sim = summarize(ok), summarize(sim_records)
    return {"meta": _meta(cfg.device), "config": asdict(cfg), "mode": "in-process" if in_process else "live",
            "num_pages": num_pages, "errors": len(records) - len(ok), "real": real, "sim": sim,
            "relative_error": {k: _relative(sim[k], real[k]) for k in COMPARED}}


def _meta(device: str) -> dict[str, Any]:
    import torch

    from .engine import environment

    return environment(torch.device(device))


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [f"{result['meta']['device']}, commit {result['meta']['commit']}, {result['meta']['date']}; "
             f"{result['mode']} run of {cfg['workers']} replica(s) x {result['num_pages']} KV pages, "
             f"policy {cfg['policy']}, {cfg['workload']} "
             f"{cfg['params']}, {cfg['num_requests']} requests at {cfg['rate']}/s; "
             f"{result['errors']} errors.", "",
             "| metric | real | simulated | error |", "|---|---:|---:|---:|"]
    for k in COMPARED:
        lines.append(f"| {k} | {result['real'][k]:.4g} | {result['sim'][k]:.4g} | "
                     f"{result['relative_error'][k]:+.1%} |")
    return "\n".join(lines) + "\n"
