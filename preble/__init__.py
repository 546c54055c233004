"""Preble: LLM serving that co-optimises KV-cache prefix reuse and load balance."""

from .core.sampling_params import SamplingParams
from .engine.llm import LLM
from .engine.outputs import CompletionOutput, RequestOutput

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"
