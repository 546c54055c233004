"""Attention over the KV pool. `AttentionBackend` is the interface; one backend per device kind."""

from .base import AttentionBackend
from .torch_sdpa import TorchSDPABackend

__all__ = ["AttentionBackend", "TorchSDPABackend", "make_backend"]


def make_backend(name: str, pool) -> AttentionBackend:
    if name == "triton":
        # Imported here, not at module level: Triton exists only on CUDA machines.
        from .triton_backend import TritonBackend

        return TritonBackend(pool)
    backends = {"torch_sdpa": TorchSDPABackend}
    try:
        return backends[name](pool)
    except KeyError:
        choices = sorted([*backends, "triton"])
        raise ValueError(f"unknown attention backend {name!r}; choose one of {choices}") from None
