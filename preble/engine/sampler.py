"""Batched sampling: greedy, temperature, top-k, top-p, per-request seeds.

Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which draws exactly from
p. A seeded request draws its noise from its own generator, so its tokens do not depend on which
other requests share the batch.
"""

from __future__ import annotations

import torch

from ..core.sampling_params import SamplingParams
from .uploads import to_device


class Sampler:
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._generators: dict[str, torch.Generator] = {}

    def generator_for(self, request_id: str, seed: int) -> torch.Generator:
        gen = self._generators.get(request_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
            self._generators[request_id] = gen
        return gen

    def release(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

    def __call__(self, logits: torch.Tensor, request_ids: list[str],
                 params: list[SamplingParams]) -> torch.Tensor:
        """logits: [B, V] float32 -> sampled token ids [B]."""
        argmax = logits.argmax(dim=-1)
        flags = [p.greedy for p in params]
        if all(flags):  # decided on the host: no upload, no device sync
            return argmax
        greedy = to_device(flags, torch.bool, logits.device)
        temps = to_device([p.temperature if not p.greedy else 1.0 for p in params], logits.dtype, logits.device)
        probs = self._filtered_probs(logits / temps[:, None], params)
        noise = torch.empty_like(probs).exponential_()  # one draw for all unseeded rows
        for i, (rid, p) in enumerate(zip(request_ids, params)):
            if p.seed is not None:  # a seeded row draws from its own generator
                noise[i].exponential_(generator=self.generator_for(rid, p.seed))
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(greedy, argmax, sampled)

    @staticmethod
    def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Softmax after masking tokens outside each row's top-k and top-p sets."""
        vocab = logits.shape[-1]
        ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
        ps = [p.top_p for p in params]
        if all(k == vocab for k in ks) and all(p >= 1.0 for p in ps):  # decided on the host: no sync
            return torch.softmax(logits, dim=-1)
        top_k = to_device(ks, torch.int64, logits.device)
        top_p = to_device(ps, logits.dtype, logits.device)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        drop = ranks >= top_k[:, None]
        sorted_probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        # Keep the smallest head whose mass reaches top_p: drop a token when the mass before it
        # already does (the top token always survives).
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop |= mass_before >= top_p[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        filtered = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        return torch.softmax(filtered, dim=-1)
