"""`preble serve`: N workers and a router, started and stopped as one.

Workers run as child processes (`preble worker`; or as Ray actors' children, see
preble/ray_workers.py; both started and restarted by preble/processes.py) that die with this process (Linux parent-death signal), so neither
Ctrl-C, SIGTERM nor a crash of the launcher leaves orphans behind. A worker that crashes is
started again on its port; the router re-admits it when its health check passes.
"""

from __future__ import annotations

import os
import signal
import threading

from .launch_config import ServeConfig
from .processes import ChildProcess, raise_if_exited, stop_all, supervise
from .router.config import RouterServerConfig
from .supervision import wait_healthy, worker_api_key, worker_command


class NotEnoughGPUs(RuntimeError):
    """The workers need more GPUs than this machine shows; nothing has been started."""


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs)."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [x.strip() for x in listed.split(",") if x.strip()] if listed is not None else []
    return names[:count] if listed is not None else [str(i) for i in range(count)]


def gpu_plan(workers: int, tp: int, gpus: list[str]) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each worker: worker i takes GPUs i*tp .. i*tp+tp-1 of `gpus` (the
    launcher's own visible GPUs, so a CUDA_VISIBLE_DEVICES given to `preble serve` is honoured)."""
    need = workers * tp
    if need > len(gpus):
        hint = f"; start at most {len(gpus) // tp} with --tp {tp}" if len(gpus) >= tp else ""
        raise NotEnoughGPUs(f"{workers} worker(s) x {tp} GPU(s) need {need} GPUs (one worker per GPU), and this "
                            f"machine shows {len(gpus)}{hint}")
    return [",".join(gpus[i * tp:(i + 1) * tp]) for i in range(workers)]


def _threads_per_worker(n: int) -> int:
    return max(1, (os.cpu_count() or 1) // n)


class LocalWorkers:
    """The launcher's workers: child processes on consecutive loopback ports that share an API
    key (passed in the environment; PREBLE_WORKER_API_KEY's, else a random one), so only the
    router, and whoever set it, can use them."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.api_key = worker_api_key()
        base = cfg.worker_base_port or cfg.port + 1
        ports = [base + i for i in range(cfg.workers)]
        self.urls = [f"http://127.0.0.1:{p}" for p in ports]
        self.gpus = gpu_plan(cfg.workers, cfg.tp, visible_gpus()) if cfg.device == "cuda" else None
        self.workers = [self._worker(i, port) for i, port in enumerate(ports)]
        self._stop = threading.Event()

    def _worker(self, i: int, port: int) -> ChildProcess:
        cfg = self.cfg
        env = {**os.environ, "PREBLE_WORKER_API_KEY": self.api_key}
        threads = None
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[i]
        else:
            threads = _threads_per_worker(cfg.workers * cfg.tp)
        return ChildProcess(f"worker-{i}", worker_command(cfg, i, "127.0.0.1", port, threads), env)

    def ready(self, timeout_s: float) -> None:
        """Wait until every worker answers, then restart any that crashes (the router re-admits
        it once healthy) until `stop`."""
        wait_healthy(self.urls, timeout_s, lambda: raise_if_exited(self.workers, "a worker exited during start-up"))
        threading.Thread(target=supervise, args=(self.workers, self._stop, self.cfg.supervise_interval_s),
                         name="preble-supervisor", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        stop_all(self.workers, self.cfg.stop_grace_s)


def _interrupt(signum, frame) -> None:
    """SIGTERM behaves like Ctrl-C, so the launcher's cleanup always runs."""
    raise KeyboardInterrupt


def serve(cfg: ServeConfig) -> None:
    from .router.server import run_router

    if cfg.ray:
        from .ray_workers import RayWorkers
        workers = RayWorkers(cfg)
    else:
        workers = LocalWorkers(cfg)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        workers.ready(cfg.startup_timeout_s)
        where = f" on Ray at {workers.address}" if cfg.ray else ""
        print(f"Preble is serving {cfg.model} on http://{cfg.host}:{cfg.port}/v1 "
              f"({cfg.workers} workers{where}, policy {cfg.policy})", flush=True)
        run_router(RouterServerConfig(model=cfg.model, workers=workers.urls, policy=cfg.policy, host=cfg.host,
                                      port=cfg.port, max_inflight=cfg.max_inflight, api_key=cfg.api_key,
                                      worker_api_key=workers.api_key, log_json=cfg.log_json,
                                      cost_model=cfg.cost_model))
    except KeyboardInterrupt:
        pass
    finally:
        workers.stop()
