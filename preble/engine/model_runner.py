"""Turns a scheduler step into tensors, runs the model and samples: the engine's executor."""

from __future__ import annotations

import numpy as np
import torch

from ..core.request import Request
from ..core.scheduler import SchedulerOutput
from .attention import AttentionBackend
from .batch import ForwardBatch
from .model.llama import LlamaForCausalLM
from .sampler import Sampler


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, backend: AttentionBackend, sampler: Sampler,
                 page_size: int, device: torch.device) -> None:
        self.model = model
        self.backend = backend
        self.sampler = sampler
        self.page_size = page_size
        self.device = device

    def build_batch(self, out: SchedulerOutput) -> ForwardBatch:
        ps = self.page_size
        ids, positions, slots, logit_rows = [], [], [], []
        row = 0
        for chunk in out.chunks:
            req = chunk.request
            ids.extend(req.all_token_ids[chunk.start:chunk.end])
            pos = np.arange(chunk.start, chunk.end)
            positions.append(pos)
            slots.append(np.asarray(req.pages)[pos // ps] * ps + pos % ps)
            row += chunk.num_tokens
            if chunk.samples:
                logit_rows.append(row - 1)

        def tensor(x) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.int64)).to(self.device, non_blocking=True)

        return ForwardBatch(
            input_ids=tensor(ids),
            positions=tensor(np.concatenate(positions)),
            out_slots=tensor(np.concatenate(slots)),
            starts=[c.start for c in out.chunks],
            lens=[c.num_tokens for c in out.chunks],
            page_tables=[c.request.pages[: -(-c.end // ps)] for c in out.chunks],
            logit_indices=tensor(logit_rows),
            page_size=ps,
        )

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[Request, int]:
        """Run one step; return the token sampled for each request whose chunk samples."""
        batch = self.build_batch(out)
        logits = self.model(batch, self.backend)
        sampling = [c.request for c in out.chunks if c.samples]
        if not sampling:
            return {}
        tokens = self.sampler(logits, [r.request_id for r in sampling], [r.sampling for r in sampling])
        return dict(zip(sampling, tokens.tolist()))
