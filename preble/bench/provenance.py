"""Which source a result came from: the commit, and whether the tree had uncommitted changes.

Every results file records this, so a figure can be traced to the code that produced it. A copy
of the tree sent elsewhere (a GPU box) may carry no git history, or the history of another
commit: there `PREBLE_COMMIT` names the commit, and `PREBLE_MANIFEST` the path of its file list
(`git ls-tree -r <commit>`), against which each file of the copy is hashed to tell whether it is
that commit's tree. Without the manifest, whether the copy is clean is unknown (`dirty` None).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]  # where a manifest's paths start

def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def source_revision() -> dict[str, Any]:
    """{"commit": ..., "dirty": bool or None (unknown)[, "diff_sha256": a hash of the differences]}."""
    named, head = os.environ.get("PREBLE_COMMIT"), _git("rev-parse", "HEAD")
    if named and named != head:
        return {"commit": named, **_against_manifest(os.environ.get("PREBLE_MANIFEST"))}
    diff = _git("diff", "HEAD")
    out: dict[str, Any] = {"commit": head or "unknown", "dirty": bool(diff)}
    if diff:
        out["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()[:16]
    return out


def blob_hash(data: bytes) -> str:
    """git's object id of a file's content (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _against_manifest(manifest: str | None, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Whether the files under `root` are those a `git ls-tree -r` listing names (its blobs only)."""
    if not manifest or not Path(manifest).is_file():
        return {"dirty": None}
    changed = []
    for line in Path(manifest).read_text().splitlines():
        meta, path = line.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind != "blob":
            continue
        file = root / path
        if mode == "120000":
            found = blob_hash(os.readlink(file).encode()) if file.is_symlink() else None
        else:
            found = blob_hash(file.read_bytes()) if file.is_file() else None
        if found != sha:
            changed.append(f"{path}:{found}")
    out: dict[str, Any] = {"dirty": bool(changed)}
    if changed:
        out["diff_sha256"] = hashlib.sha256("\n".join(changed).encode()).hexdigest()[:16]
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
