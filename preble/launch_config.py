"""`preble serve`'s configuration, apart from the launcher (preble/launch.py) so that the
command line reads its defaults from here and still starts fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from .engine.config import EngineConfig
from .router.config import RouterServerConfig


@dataclass(frozen=True)
class ServeConfig:
    model: str
    workers: int = 2
    tp: int = EngineConfig.tensor_parallel_size  # tensor-parallel ranks: worker i runs on GPUs i*tp .. i*tp+tp-1
    device: str = EngineConfig.device
    policy: str = RouterServerConfig.policy
    host: str = RouterServerConfig.host
    port: int = RouterServerConfig.port
    worker_base_port: int | None = None  # default: port + 1, port + 2, ...
    worker_args: list[str] = field(default_factory=list)  # extra `preble worker` options
    startup_timeout_s: float = 300.0
    max_inflight: int = RouterServerConfig.max_inflight  # requests the router admits at once
    api_key: str | None = None  # required from the router's clients
    supervise_interval_s: float = 0.5  # how often crashed workers are looked for (and restarted)
    stop_grace_s: float = 10.0  # how long stopped workers get to exit before SIGKILL
    log_json: bool = False  # router and workers log JSON lines
    cost_model: str | None = None  # e2's cost model (`preble profile` JSON); None: built-in
    ray: bool = False  # place workers as Ray actors (each on --tp GPUs, or a share of CPUs) instead of local children
    ray_address: str | None = None  # an existing Ray cluster; None: start one on this host, on loopback
