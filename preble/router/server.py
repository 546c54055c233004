"""Start the router: resolve the model's facts, build the policy, serve with uvicorn."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import uvicorn

from ..core.cost_model import CostModel
from ..core.routing import DEFAULT_PAGE_SIZE, make_policy, reads_caches
from ..http.logs import configure_logging
from ..http.serve import server_config
from ..models.config import ModelConfig
from .app import create_router_app
from .config import DashboardConfig, RouterConfig, RouterServerConfig, WorkerPoolConfig
from .gc_tuning import tune_gc

log = logging.getLogger("preble.router")


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
    # SIGTERM: in-flight requests get the drain timeout, then uvicorn returns (exit status 0).
    uvicorn.Server(server_config(app, cfg.host, cfg.port, cfg.drain_timeout_s, cfg.keep_alive_s)).run()
