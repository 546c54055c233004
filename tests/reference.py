"""Hugging Face transformers as the reference implementation for model outputs."""

from __future__ import annotations

import functools

import torch
from transformers import AutoModelForCausalLM


@functools.lru_cache(maxsize=16)
def hf_model(path: str, dtype: torch.dtype = torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


@torch.inference_mode()
def hf_greedy(path: str, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation by full recomputation each step: no cache, nothing to get wrong."""
    model = hf_model(path)
    ids = list(prompt)
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


@torch.inference_mode()
def hf_logits(path: str, prompt: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Logits at every position of `prompt`: [len, vocab] float32."""
    return hf_model(path, dtype)(torch.tensor([prompt])).logits[0].float()
