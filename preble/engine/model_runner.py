"""Turns a scheduler step into tensors, runs the model and samples: the engine's executor."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.request import Request
from ..core.scheduler import SchedulerOutput
from .attention import AttentionBackend
from .batch import ForwardBatch
from .model.llama import LlamaForCausalLM
from .sampler import Sampler

if TYPE_CHECKING:  # CUDA graphs need Triton, which CPU installs lack
    from .cuda_graph import DecodeGraphs


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, backend: AttentionBackend, sampler: Sampler,
                 page_size: int, device: torch.device, graphs: DecodeGraphs | None = None) -> None:
        self.model = model
        self.backend = backend
        self.sampler = sampler
        self.page_size = page_size
        self.device = device
        self.graphs = graphs

    def build_batch(self, out: SchedulerOutput) -> ForwardBatch:
        ps = self.page_size
        ids, positions, slots, logit_rows = [], [], [], []
        row = 0
        for chunk in out.chunks:
            req = chunk.request
            ids.extend(req.token_ids(chunk.start, chunk.end))
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

    def _graph_decode(self, out: SchedulerOutput) -> torch.Tensor:
        ps = self.page_size
        ids, positions, tables = [], [], []
        for chunk in out.chunks:
            req = chunk.request
            ids.append(req.token_ids(chunk.start, chunk.start + 1)[0])
            positions.append(chunk.start)
            tables.append(req.pages[: chunk.start // ps + 1])
        pos = np.asarray(positions)
        slots = np.asarray([t[-1] for t in tables]) * ps + pos % ps
        return self.graphs.run(ids, positions, slots, tables)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[Request, int]:
        """Run one step; return the token sampled for each request whose chunk samples."""
        decode_only = all(c.num_tokens == 1 for c in out.chunks)
        if self.graphs is not None and decode_only and self.graphs.fits(len(out.chunks)):
            logits = self._graph_decode(out)
        else:
            logits = self.model(self.build_batch(out), self.backend)
        sampling = [c.request for c in out.chunks if c.samples]
        if not sampling:
            return {}
        tokens = self.sampler(logits, [r.request_id for r in sampling], [r.sampling for r in sampling])
        return dict(zip(sampling, tokens.tolist()))
