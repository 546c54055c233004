"""Preble: LLM serving that co-optimises KV-cache prefix reuse and load balance."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .core.sampling_params import SamplingParams
    from .engine.llm import LLM
    from .engine.outputs import CompletionOutput, RequestOutput

_LAZY = {"LLM": "preble.engine.llm", "SamplingParams": "preble.core.sampling_params",
         "RequestOutput": "preble.engine.outputs", "CompletionOutput": "preble.engine.outputs"}


def __getattr__(name: str):
    """Import the engine (and torch) only when it is used: routers and benchmarks never need it."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'preble' has no attribute {name!r}")
