"""Supervising `preble worker` processes, the same for the launcher's local workers and for Ray's:
the command line, a child that dies with its parent and is restarted if it exits, waiting for
health, and stopping them."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx

from .child_process import spawn_tied
from .launch_config import ServeConfig

log = logging.getLogger("preble.serve")


def worker_command(cfg: ServeConfig, index: int, host: str, port: int, threads: int | None) -> list[str]:
    """The `preble worker` command line of worker `index` (threads: torch CPU threads, None on GPUs)."""
    return [sys.executable, "-m", "preble.cli", "worker", "--model", cfg.model, "--host", host,
            "--port", str(port), "--device", cfg.device, "--worker-id", f"worker-{index}",
            *(["--tp", str(cfg.tp)] if cfg.tp > 1 else []),
            *(["--threads", str(threads)] if threads is not None else []),
            *(["--log-json"] if cfg.log_json else []), *cfg.worker_args]


class WorkerProcess:
    """One `preble worker` child that dies with its parent (Linux parent-death signal) and is
    started again, on the same port, if it exits."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name, self.args, self.env = name, args, env
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        return spawn_tied(self.args, self.env)

    def restart_if_exited(self) -> None:
        if self.proc.poll() is not None:
            log.warning("%s exited (code %s); restarting it", self.name, self.proc.returncode)
            self.proc = self._spawn()


def supervise(workers: list[WorkerProcess], stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        for w in workers:
            w.restart_if_exited()


def worker_api_key() -> str:
    """The key the router presents to its workers: PREBLE_WORKER_API_KEY's, else a random one."""
    return os.environ.get("PREBLE_WORKER_API_KEY") or secrets.token_urlsafe(24)


def wait_healthy(urls: list[str], timeout_s: float, check_alive: Callable[[], None] = lambda: None) -> None:
    """Wait until every URL's /health answers 200; `check_alive` raises if a worker died meanwhile."""
    deadline = time.monotonic() + timeout_s
    pending = set(urls)
    while pending:
        check_alive()
        for url in list(pending):
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    pending.discard(url)
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not healthy after {timeout_s:.0f} s: {sorted(pending)}")
        time.sleep(0.25)


def exited_check(procs: list[subprocess.Popen]) -> Callable[[], None]:
    def check() -> None:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited during start-up (code {proc.returncode})")
    return check


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
