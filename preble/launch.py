"""`preble serve`: N local workers and a router, started and stopped as one.

Workers run as child processes (`preble worker`) that die with this process (Linux parent-death
signal), so neither Ctrl-C, SIGTERM nor a crash of the launcher leaves orphans behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
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


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _threads_per_worker(n: int) -> int:
    return max(1, (os.cpu_count() or 1) // n)


def start_workers(cfg: ServeConfig) -> tuple[list[subprocess.Popen], list[str]]:
    base = cfg.worker_base_port or cfg.port + 1
    procs, urls = [], []
    for i in range(cfg.workers):
        port = base + i
        args = [sys.executable, "-m", "preble.cli", "worker", "--model", cfg.model, "--host", "127.0.0.1",
                "--port", str(port), "--device", cfg.device, "--worker-id", f"worker-{i}", *cfg.worker_args]
        env = dict(os.environ)
        if cfg.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        else:
            args += ["--threads", str(_threads_per_worker(cfg.workers))]
        procs.append(subprocess.Popen(args, env=env, preexec_fn=_die_with_parent))
        urls.append(f"http://127.0.0.1:{port}")
    return procs, urls


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

    procs, urls = start_workers(cfg)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        wait_healthy(urls, procs, cfg.startup_timeout_s)
        print(f"Preble is serving {cfg.model} on http://{cfg.host}:{cfg.port}/v1 "
              f"({cfg.workers} workers, policy {cfg.policy})", flush=True)
        run_router(RouterServerConfig(model=cfg.model, workers=urls, policy=cfg.policy, host=cfg.host,
                                      port=cfg.port))
    except KeyboardInterrupt:
        pass
    finally:
        stop_workers(procs)
