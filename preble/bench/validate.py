"""Validate the simulator against a live cluster: the same requests at the same arrival times.

A local `preble serve` cluster runs a token-id workload open loop; the simulator then plays the
requests that were answered, at the arrival times the load generator actually sent them, on
replicas configured like the workers (page size, KV pages, step budget, local queue) with the
cost model profiled on the same device. The report is the simulator's relative error on the
summary statistics.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.cost_model import CostModel
from ..core.scheduler import SchedulerConfig
from ..sim.cluster import SimConfig, SimRequest, simulate
from ..sim.report import summarize
from .loadgen import LoadConfig, LoadRequest, RequestRecord, run_load
from .local_cluster import LocalCluster
from .workloads import make_workload

COMPARED = ("mean_latency", "p50_latency", "p99_latency", "mean_ttft", "p99_ttft", "mean_tpot", "hit_ratio")


@dataclass(frozen=True)
class ValidateConfig:
    cost_model: str  # profiled on the device the workers run on, with their thread count
    model: str | None = None  # HF folder; None: the demo model
    device: str = "cpu"
    workers: int = 2
    policy: str = "e2"
    workload: str = "shared_prefix"  # a token-id workload, so the cluster and the simulator see the same ids
    params: dict = field(default_factory=lambda: dict(groups=6, system_len=384, question_len=48, output_len=24))
    num_requests: int = 150
    rate: float = 1.0
    page_size: int = 16
    num_pages: int = 256  # per worker
    max_num_batched_tokens: int = 512
    local_policy: str = "preble"
    seed: int = 0

    def worker_args(self) -> list[str]:
        return ["--page-size", str(self.page_size), "--num-pages", str(self.num_pages),
                "--max-num-batched-tokens", str(self.max_num_batched_tokens),
                "--local-policy", self.local_policy]

    def sim_config(self) -> SimConfig:
        return SimConfig(replicas=self.workers, policy=self.policy, page_size=self.page_size,
                         num_pages=self.num_pages, seed=self.seed,
                         scheduler=SchedulerConfig(max_num_batched_tokens=self.max_num_batched_tokens,
                                                   local_policy=self.local_policy))


def _relative(sim: float, real: float) -> float:
    return (sim - real) / real if real and not math.isnan(real) else math.nan


def run(cfg: ValidateConfig, on_done: Callable[[RequestRecord], None] | None = None) -> dict[str, Any]:
    from ..models.demo import ensure_demo_model

    model = cfg.model or str(ensure_demo_model())
    wl = make_workload(cfg.workload, num_requests=cfg.num_requests, seed=cfg.seed, **cfg.params)
    if any(r.prompt_token_ids is None for r in wl.requests):
        raise ValueError(f"workload {cfg.workload!r} has text prompts; validation needs token ids")
    reqs = [LoadRequest(r.request_id, list(r.prompt_token_ids), r.max_tokens) for r in wl.requests]
    with LocalCluster(model, cfg.workers, cfg.policy, cfg.worker_args(), cfg.device) as cluster:
        records = asyncio.run(run_load(reqs, LoadConfig(cluster.url, rate=cfg.rate, seed=cfg.seed),
                                       on_done=on_done))
    ok = [r for r in records if r.error is None]
    by_id = {r.request_id: r for r in wl.requests}
    sim_reqs = [SimRequest(r.request_id, r.arrival, by_id[r.request_id].prompt_token_ids,
                           by_id[r.request_id].max_tokens) for r in ok]
    sim_records = simulate(sim_reqs, cfg.sim_config(), CostModel.load(cfg.cost_model))
    real, sim = summarize(ok), summarize(sim_records)
    return {"config": asdict(cfg), "errors": len(records) - len(ok), "real": real, "sim": sim,
            "relative_error": {k: _relative(sim[k], real[k]) for k in COMPARED}}


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [f"{cfg['workers']} workers ({cfg['device']}), policy {cfg['policy']}, {cfg['workload']} "
             f"{cfg['params']}, {cfg['num_requests']} requests at {cfg['rate']}/s; "
             f"{result['errors']} errors.", "",
             "| metric | real | simulated | error |", "|---|---:|---:|---:|"]
    for k in COMPARED:
        lines.append(f"| {k} | {result['real'][k]:.4g} | {result['sim'][k]:.4g} | "
                     f"{result['relative_error'][k]:+.1%} |")
    return "\n".join(lines) + "\n"
