"""Waiting on live servers in tests: poll a condition, fail with the reason when it never holds."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence

import httpx
import pytest


def wait_for(predicate: Callable[[], bool], timeout_s: float, procs: Sequence[subprocess.Popen] = (),
             describe: Callable[[subprocess.Popen], str] = lambda proc: "", step_s: float = 0.2) -> float:
    """Seconds until `predicate()` held (a connection error counts as not yet); fails the test
    after `timeout_s`, or as soon as one of `procs` exits (with `describe(proc)`, e.g. its log)."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args[:4]} exited with {proc.returncode}:\n{describe(proc)}")
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(step_s)
