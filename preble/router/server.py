"""Start the router: resolve the model's facts, build the policy, serve with uvicorn."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from ..core.cost_model import CostModel
from ..core.routing import DEFAULT_PAGE_SIZE, DEFAULT_POLICY, make_policy, reads_caches
from ..engine.model.config import ModelConfig
from ..server.logs import configure_logging
from .app import RouterConfig, create_router_app
from .dashboard import DashboardConfig
from .gc_tuning import tune_gc
from .workers import WorkerPoolConfig

log = logging.getLogger("preble.router")


@dataclass(frozen=True)
class RouterServerConfig:
    model: str  # HF folder: tokenizer, chat template, context window
    workers: list[str] = field(default_factory=list)  # worker base URLs
    policy: str = DEFAULT_POLICY
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    max_model_len: int | None = None
    page_size: int | None = None  # the workers' KV page size; None: read from their load reports
    discovery_timeout_s: float = 10.0  # how long to wait for a worker to tell its page size
    seed: int = 0
    max_inflight: int = 1024  # requests admitted at once; beyond, 429
    api_key: str | None = None  # required from clients
    worker_api_key: str | None = None  # presented to workers
    drain_timeout_s: float = 30.0  # on SIGTERM: in-flight requests get this long to finish
    dashboard_full_text: bool = False  # the dashboard shows whole prefixes, not just a preview
    log_json: bool = False  # log lines as JSON objects
    worker_kind: str = "preble"  # preble | openai (vllm, sglang: OpenAI-compatible engines)
    kv_events: list[str] = field(default_factory=list)  # vLLM workers' KV event endpoints (ZMQ), one per worker
    cost_model: str | None = None  # e2's cost model, a `preble profile` JSON; None: built-in (8B on H100)
    health_timeout_s: float = WorkerPoolConfig.unhealthy_after_s  # a worker silent this long is routed around


def discover_page_size(urls: list[str], timeout_s: float, api_key: str | None = None) -> int | None:
    """The KV page size the first answering worker reports (all workers must share it)."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    while time.monotonic() < deadline:
        for url in urls:
            try:
                return int(httpx.get(f"{url.rstrip('/')}/load", timeout=1.0, headers=headers).json()["page_size"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
        time.sleep(0.25)
    return None


def build_router_app(cfg: RouterServerConfig):
    model_cfg = ModelConfig.from_dir(cfg.model)
    max_len = model_cfg.context_window(cfg.max_model_len)
    external = cfg.worker_kind != "preble"
    page_size = cfg.page_size or DEFAULT_PAGE_SIZE
    if reads_caches(cfg.policy) and not cfg.page_size and not external:
        # External engines send no KV events, or (vLLM) blocks split into pages: the tree's pages
        # are then the router's own granularity. Preble workers say theirs.
        found = discover_page_size(cfg.workers, cfg.discovery_timeout_s, cfg.worker_api_key)
        if found is None:
            log.warning("no worker reported its page size; %s assumes %d", cfg.policy, DEFAULT_PAGE_SIZE)
        page_size = found or DEFAULT_PAGE_SIZE
    cost = CostModel.load(cfg.cost_model) if cfg.cost_model else None
    policy = make_policy(cfg.policy, clock=time.monotonic, page_size=page_size, cost_model=cost, seed=cfg.seed)
    rcfg = RouterConfig(model_path=cfg.model, served_model_name=cfg.served_model_name or Path(cfg.model).name,
                        max_model_len=max_len, max_inflight=cfg.max_inflight, api_key=cfg.api_key,
                        worker_api_key=cfg.worker_api_key,
                        dashboard=DashboardConfig(full_text=cfg.dashboard_full_text),
                        pool=WorkerPoolConfig(worker_kind="openai" if external else "preble",
                                              kv_events=tuple(cfg.kv_events),
                                              unhealthy_after_s=cfg.health_timeout_s,
                                              page_size=page_size))
    return create_router_app(rcfg, cfg.workers, policy)


def run_router(cfg: RouterServerConfig) -> None:
    configure_logging(cfg.log_json)
    app = build_router_app(cfg)
    tune_gc()
    # SIGTERM: uvicorn stops accepting, lets in-flight requests finish for the drain timeout,
    # cancels what is left, and returns (exit status 0).
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                timeout_graceful_shutdown=cfg.drain_timeout_s)
