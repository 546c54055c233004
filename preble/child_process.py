"""Child processes that never outlive their parent (Linux's parent-death signal)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from collections.abc import Mapping, Sequence

PR_SET_PDEATHSIG = 1


def spawn_tied(args: Sequence[str], env: Mapping[str, str] | None = None, signum: int = signal.SIGTERM,
               **popen_kwargs) -> subprocess.Popen:
    """Popen whose child gets `signum` when the parent dies, however it dies (even by SIGKILL)."""

    def tie() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signum)

    return subprocess.Popen(list(args), env=dict(env) if env is not None else None, preexec_fn=tie, **popen_kwargs)
