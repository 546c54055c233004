"""Attention over the KV pool. `AttentionBackend` is the interface; one backend per device kind."""

from .base import AttentionBackend
from .torch_sdpa import TorchSDPABackend

__all__ = ["AttentionBackend", "TorchSDPABackend", "make_backend"]


def make_backend(name: str, pool) -> AttentionBackend:
    backends = {"torch_sdpa": TorchSDPABackend}
    try:
        return backends[name](pool)
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(backends)}") from None
