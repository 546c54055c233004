"""Supervising `preble worker` processes, the same for the launcher's local workers and for Ray's:
the command line, the key they share with the router, and waiting for health. Starting,
restarting and stopping them is preble/processes.py's, as for every child process."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable

import httpx

from .launch_config import ServeConfig
from .processes import wait_until


def worker_command(cfg: ServeConfig, index: int, host: str, port: int, threads: int | None) -> list[str]:
    """The `preble worker` command line of worker `index` (threads: torch CPU threads, None on GPUs)."""
    return [sys.executable, "-m", "preble.cli", "worker", "--model", cfg.model, "--host", host,
            "--port", str(port), "--device", cfg.device, "--worker-id", f"worker-{index}",
            *(["--tp", str(cfg.tp)] if cfg.tp > 1 else []),
            *(["--threads", str(threads)] if threads is not None else []),
            *(["--log-json"] if cfg.log_json else []), *cfg.worker_args]


def worker_api_key() -> str:
    """The key the router presents to its workers: PREBLE_WORKER_API_KEY's, else a random one."""
    return os.environ.get("PREBLE_WORKER_API_KEY") or secrets.token_urlsafe(24)


def wait_healthy(urls: list[str], timeout_s: float, check_alive: Callable[[], None], poll_s: float = 0.25) -> None:
    """Wait until every URL's /health answers 200; `check_alive` raises if a worker exited meanwhile
    (local workers and Ray's are watched differently)."""
    pending = set(urls)

    def all_healthy() -> bool:
        check_alive()
        for url in list(pending):
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    pending.discard(url)
            except httpx.HTTPError:
                pass
        return not pending

    wait_until(all_healthy, (), timeout_s, poll_s, "workers")
