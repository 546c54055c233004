"""Child processes, one way for all of them: the launcher's workers, Ray's, the benchmark
clusters and the peer routers. A child is tied to this process (Linux's parent-death signal, so
none outlives a crashed parent), may log to a file (nobody reads a pipe while a benchmark runs,
and a full one blocks), is waited on until ready while it is watched for an early exit, and is
stopped with SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import httpx

PR_SET_PDEATHSIG = 1
NOT_READY_YET = (httpx.HTTPError, ValueError, KeyError, TypeError)  # a server still starting answers badly

log = logging.getLogger("preble.processes")


def spawn_tied(args: Sequence[str], env: Mapping[str, str] | None = None, signum: int = signal.SIGTERM,
               cpus: Collection[int] | None = None, **popen_kwargs) -> subprocess.Popen:
    """Popen whose child gets `signum` when the parent dies, however it dies (even by SIGKILL);
    with `cpus`, the child and everything it starts run on those cores only."""

    def tie() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen(list(args), env=dict(env) if env is not None else None, preexec_fn=tie, **popen_kwargs)


class ChildProcess:
    """One tied child; its output goes to `log_path` (appended across restarts) or, if None, to
    this process's own output; with `cpus`, it runs on those cores only."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None,
                 log_path: Path | None = None, cpus: Collection[int] | None = None) -> None:
        self.name, self.args, self.env, self.log_path, self.cpus = name, list(args), env, log_path, cpus
        self._log = open(log_path, "a") if log_path is not None else None
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        if self._log is None:
            return spawn_tied(self.args, self.env, cpus=self.cpus)
        return spawn_tied(self.args, self.env, cpus=self.cpus, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int) -> str:
        """The end of the log ('' without one)."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path is not None else ""

    def restart_if_exited(self) -> None:
        if not self.alive():
            log.warning("%s exited (code %s); restarting it", self.name, self.proc.returncode)
            self.proc = self._spawn()

    def terminate(self) -> None:
        if self.alive():
            self.proc.terminate()

    def wait_or_kill(self, timeout_s: float) -> int:
        """The exit code, after SIGKILL if it has not exited within `timeout_s`."""
        try:
            code = self.proc.wait(timeout=max(0.1, timeout_s))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._log is not None:
            self._log.close()
        return code

    def stop(self, grace_s: float) -> int:
        self.terminate()
        return self.wait_or_kill(grace_s)


def stop_all(children: Sequence[ChildProcess], grace_s: float) -> None:
    """SIGTERM to all at once, then one shared grace period before SIGKILL."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.wait_or_kill(deadline - time.monotonic())


def raise_if_exited(children: Sequence[ChildProcess], what: str, tail_chars: int = 3000) -> None:
    """Raise, with its log's end, if one of `children` has exited."""
    for child in children:
        if not child.alive():
            raise RuntimeError(f"{what}: {child.name} exited (code {child.proc.returncode}): {child.tail(tail_chars)}")


def wait_until(ready: Callable[[], bool], children: Sequence[ChildProcess], timeout_s: float, poll_s: float,
               what: str, tail_chars: int = 3000) -> None:
    """Poll `ready` until it holds (an error from a server still starting counts as not yet);
    raise as soon as one of `children` exits, or when time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        raise_if_exited(children, what, tail_chars)
        try:
            if ready():
                return
        except NOT_READY_YET:
            pass
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {c.name}\n{c.tail(tail_chars)}" for c in children if c.log_path is not None)
            raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s{tails}")
        time.sleep(poll_s)


def supervise(children: Sequence[ChildProcess], stop: threading.Event, interval_s: float) -> None:
    """Restart any child that exits, every `interval_s`, until `stop` is set."""
    while not stop.wait(interval_s):
        for child in children:
            child.restart_if_exited()
