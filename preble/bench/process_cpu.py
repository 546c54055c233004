"""CPU time of a `preble serve` cluster's processes, by role, read from Linux's /proc.

Where a served request's time goes when the device is fast: each of the router, the workers'
HTTP frontends and their engine loops is one Python process, and one that needs a whole core is
the path's bottleneck. `preble serve` runs the router in the launcher; each worker frontend is
its child and each engine the frontend's child.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
ROLES = ("router", "frontend", "engine")  # by depth below the launcher
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:  # gone, or not Linux
        return None
    return text[text.rindex(")") + 2:].split()


def _parents() -> dict[int, int]:
    """Each live process's parent (scanning /proc: some kernels, gVisor's among them, have no
    per-task children file)."""
    parents = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def _cpu_seconds(pid: int) -> float | None:
    fields = _stat(pid)
    if fields is None:
        return None
    # Fields 14 and 15 of stat (utime, stime); the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_by_role(launcher_pid: int) -> dict[str, float] | None:
    """CPU seconds used so far by the router, all frontends and all engines; None off Linux."""
    if _cpu_seconds(launcher_pid) is None:
        return None
    parents = _parents()
    totals = dict.fromkeys(ROLES, 0.0)
    level = {launcher_pid}
    for role in ROLES:
        totals[role] = sum(s for pid in level if (s := _cpu_seconds(pid)) is not None)
        level = {pid for pid, parent in parents.items() if parent in level}
    return totals


def cpu_share(before: dict[str, float] | None, after: dict[str, float] | None, seconds: float,
              output_tokens: int) -> dict[str, dict[str, float]] | None:
    """Each role's busy fraction of one core and CPU microseconds per output token between two
    readings."""
    if before is None or after is None or seconds <= 0:
        return None
    used = {role: after[role] - before[role] for role in ROLES}
    return {role: {"cores": used[role] / seconds, "us_per_token": used[role] / max(1, output_tokens) * 1e6}
            for role in ROLES}
