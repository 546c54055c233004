"""Which source a result came from: the commit, and whether the tree had uncommitted changes.

Every results file records this, so a figure can be traced to the code that produced it.
`PREBLE_COMMIT` names the commit where the tree travels without its history (a GPU box).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from typing import Any


def source_revision() -> dict[str, Any]:
    """{"commit": ..., "dirty": bool[, "diff_sha256": the uncommitted diff's hash]}."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    commit = os.environ.get("PREBLE_COMMIT") or git("rev-parse", "HEAD") or "unknown"
    diff = git("diff", "HEAD")
    out: dict[str, Any] = {"commit": commit, "dirty": bool(diff)}
    if diff:
        out["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()[:16]
    return out


def host_machine() -> dict[str, Any]:
    """The CPU a result was measured on: model name, cores, Python and platform."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
