"""A `preble serve` cluster in a child process, for benchmarks, the demo and tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import httpx

from ..core.routing import DEFAULT_POLICY


def free_port_block(n: int) -> int:
    """A base port whose next n ports were free a moment ago."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65535 and all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free block of ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class LocalCluster:
    """Router + `workers` workers on loopback; `stop()` (or leaving the `with`) ends them all.
    The log goes to a file: nobody reads a pipe while a benchmark runs, and a full one blocks."""

    def __init__(self, model: str, workers: int = 2, policy: str = DEFAULT_POLICY,
                 worker_args: Sequence[str] = (), device: str = "cpu",
                 startup_timeout_s: float = 300.0, serve_args: Sequence[str] = ()) -> None:
        self.workers = workers
        self.port = free_port_block(workers + 1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="preble-serve-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "preble.cli", "serve", "--model", model, "--workers", str(workers),
             "--policy", policy, "--port", str(self.port), "--device", device, *serve_args, *worker_args],
            stdout=self.log, stderr=subprocess.STDOUT, text=True)
        try:
            self._wait(startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"preble serve exited: {self.log_tail()}")
            try:
                body = httpx.get(f"{self.url}/health", timeout=1).json()
                if len(body.get("healthy_workers", [])) == self.workers:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not healthy after {timeout_s:.0f} s: {self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, chars: int = 4000) -> str:
        with open(self.log.name) as f:
            return f.read()[-chars:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
