"""Which source a result came from: the commit, and whether the tree had uncommitted changes.

Every results file records this, so a figure can be traced to the code that produced it.
`PREBLE_COMMIT` names the commit where the tree travels without its history (a GPU box).
"""

from __future__ import annotations

import hashlib
import os
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
