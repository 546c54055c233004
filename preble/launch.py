"""`preble serve`: N local workers and a router, started and stopped as one.

Workers run as child processes (`preble worker`) that die with this process (Linux parent-death
signal), so neither Ctrl-C, SIGTERM nor a crash of the launcher leaves orphans behind. A worker
that crashes is started again on its port; the router re-admits it when its health check passes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx

log = logging.getLogger("preble.serve")

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServeConfig:
    model: str
    workers: int = 2
    device: str = "cpu"
    policy: str = "e2"
    host: str = "127.0.0.1"
    port: int = 8000
    worker_base_port: int | None = None  # default: port + 1, port + 2, ...
    worker_args: list[str] = field(default_factory=list)  # extra `preble worker` options
    startup_timeout_s: float = 300.0
    max_inflight: int = 1024  # requests the router admits at once
    api_key: str | None = None  # required from the router's clients
    supervise_interval_s: float = 0.5  # how often crashed workers are looked for (and restarted)
    log_json: bool = False  # router and workers log JSON lines


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _threads_per_worker(n: int) -> int:
    return max(1, (os.cpu_count() or 1) // n)


class LocalWorkers:
    """The launcher's workers: child processes on consecutive loopback ports that share an API
    key (passed in the environment; PREBLE_WORKER_API_KEY's, else a random one), so only the
    router, and whoever set it, can use them."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.api_key = os.environ.get("PREBLE_WORKER_API_KEY") or secrets.token_urlsafe(24)
        base = cfg.worker_base_port or cfg.port + 1
        self.ports = [base + i for i in range(cfg.workers)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.procs = [self._spawn(i) for i in range(cfg.workers)]

    def _spawn(self, i: int) -> subprocess.Popen:
        cfg = self.cfg
        args = [sys.executable, "-m", "preble.cli", "worker", "--model", cfg.model, "--host", "127.0.0.1",
                "--port", str(self.ports[i]), "--device", cfg.device, "--worker-id", f"worker-{i}",
                *(["--log-json"] if cfg.log_json else []), *cfg.worker_args]
        env = {**os.environ, "PREBLE_WORKER_API_KEY": self.api_key}
        if cfg.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        else:
            args += ["--threads", str(_threads_per_worker(cfg.workers))]
        return subprocess.Popen(args, env=env, preexec_fn=_die_with_parent)

    def restart_crashed(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                log.warning("worker-%d exited (code %s); restarting it", i, proc.returncode)
                self.procs[i] = self._spawn(i)

    def supervise(self, stop: threading.Event) -> None:
        """Restart crashed workers until `stop` is set (the router re-admits them once healthy)."""
        while not stop.wait(self.cfg.supervise_interval_s):
            self.restart_crashed()


def wait_healthy(urls: list[str], procs: list[subprocess.Popen], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(urls)
    while pending:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited during start-up (code {proc.returncode})")
        for url in list(pending):
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    pending.discard(url)
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not healthy after {timeout_s:.0f} s: {sorted(pending)}")
        time.sleep(0.25)


def stop_workers(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def _interrupt(signum, frame) -> None:
    """SIGTERM behaves like Ctrl-C, so the launcher's cleanup always runs."""
    raise KeyboardInterrupt


def serve(cfg: ServeConfig) -> None:
    from .router.server import RouterServerConfig, run_router

    workers = LocalWorkers(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        wait_healthy(workers.urls, workers.procs, cfg.startup_timeout_s)
        threading.Thread(target=workers.supervise, args=(stop,), name="preble-supervisor", daemon=True).start()
        print(f"Preble is serving {cfg.model} on http://{cfg.host}:{cfg.port}/v1 "
              f"({cfg.workers} workers, policy {cfg.policy})", flush=True)
        run_router(RouterServerConfig(model=cfg.model, workers=workers.urls, policy=cfg.policy, host=cfg.host,
                                      port=cfg.port, max_inflight=cfg.max_inflight, api_key=cfg.api_key,
                                      worker_api_key=workers.api_key, log_json=cfg.log_json))
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        stop_workers(workers.procs)
