"""A `preble serve` cluster in a child process, for benchmarks, the demo and tests."""

from __future__ import annotations

import os
import random
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from ..core.routing import DEFAULT_POLICY
from ..processes import ChildProcess, wait_until

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000  # below this lie well-known services' ports
EXIT_LOG_CHARS = 30_000  # of the serve log shown when a with-block fails: room for a traceback or two


def free_port_block(n: int) -> int:
    """A base port whose next n ports were free a moment ago, below the kernel's ephemeral range:
    the ports the kernel hands out meanwhile (to Ray's processes, to any client socket) cannot
    take them before our servers bind."""
    ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0]) if EPHEMERAL_RANGE.is_file() else 32_768
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(LOWEST_PORT, max(LOWEST_PORT + 1, ephemeral_low - n))
        if all(_free(base + i) for i in range(n)):
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
    """Router + `workers` workers on loopback; `stop()` (or leaving the `with`) ends them all, as
    does this process's death. The log goes to a temporary file, removed at `stop()`; leaving the
    `with` on an exception first copies its end to stderr, so the servers' side of a failure is
    not lost with it; `keep_log`: move the whole log there instead of removing it. `env`:
    `preble serve`'s environment (default: this process's), e.g. PREBLE_WORKER_API_KEY for a
    caller that talks to the workers too."""

    def __init__(self, model: str, workers: int = 2, policy: str = DEFAULT_POLICY,
                 worker_args: Sequence[str] = (), device: str = "cpu",
                 startup_timeout_s: float = 300.0, serve_args: Sequence[str] = (),
                 stop_grace_s: float = 60.0, poll_s: float = 0.3, env: Mapping[str, str] | None = None,
                 keep_log: Path | None = None) -> None:
        self.workers, self.stop_grace_s, self.keep_log = workers, stop_grace_s, keep_log
        self.port = free_port_block(workers + 1)
        self.url = f"http://127.0.0.1:{self.port}"
        fd, log_path = tempfile.mkstemp(prefix="preble-serve-", suffix=".log")
        os.close(fd)
        self.child = ChildProcess(
            "preble serve",
            [sys.executable, "-m", "preble.cli", "serve", "--model", model, "--workers", str(workers),
             "--policy", policy, "--port", str(self.port), "--device", device, *serve_args, *worker_args],
            env=env, log_path=Path(log_path))
        self.proc = self.child.proc
        try:
            wait_until(self._all_healthy, [self.child], startup_timeout_s, poll_s, "cluster")
        except BaseException:
            self.stop()
            raise

    def _all_healthy(self) -> bool:
        return len(httpx.get(f"{self.url}/health", timeout=1).json().get("healthy_workers", [])) == self.workers

    def log_tail(self, chars: int = 4000) -> str:
        return self.child.tail(chars)

    def stop(self) -> int:
        """`preble serve`'s exit code (SIGKILL'd if it outlives the grace period)."""
        code = self.child.stop(self.stop_grace_s)
        if self.keep_log is not None and self.child.log_path.exists():
            self.keep_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.child.log_path, self.keep_log)
        self.child.log_path.unlink(missing_ok=True)
        return code

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            print(f"--- end of the `preble serve` log ({self.child.log_path}):\n{self.log_tail(EXIT_LOG_CHARS)}", file=sys.stderr)
        self.stop()
