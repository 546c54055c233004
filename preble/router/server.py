"""Start the router: resolve the model's facts, build the policy, serve with uvicorn."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from ..core.routing import make_policy
from ..engine.model.config import ModelConfig
from .app import RouterConfig, create_router_app


@dataclass(frozen=True)
class RouterServerConfig:
    model: str  # HF folder: tokenizer, chat template, context window
    workers: list[str] = field(default_factory=list)  # worker base URLs
    policy: str = "e2"
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    max_model_len: int | None = None
    seed: int = 0


def build_router_app(cfg: RouterServerConfig):
    model_cfg = ModelConfig.from_dir(cfg.model)
    max_len = min(cfg.max_model_len or model_cfg.max_position_embeddings, model_cfg.max_position_embeddings)
    policy = make_policy(cfg.policy, clock=time.monotonic, seed=cfg.seed)
    rcfg = RouterConfig(model_path=cfg.model, served_model_name=cfg.served_model_name or Path(cfg.model).name,
                        max_model_len=max_len)
    return create_router_app(rcfg, cfg.workers, policy)


def run_router(cfg: RouterServerConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll would drown the routing log
    uvicorn.run(build_router_app(cfg), host=cfg.host, port=cfg.port, log_level="warning")
