"""Turns a scheduler step into tensors, runs the model and samples.

A step is first laid out as a `StepInput` (plain arrays), which is all any rank needs to run it:
under tensor parallelism rank 0 sends it to the other ranks (`tp_ranks.py`), and every rank runs
the same forward pass on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
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


class _WireStep(msgspec.Struct, array_like=True):
    ids: bytes
    positions: bytes
    slots: bytes
    starts: list[int]
    lens: list[int]
    page_tables: list[list[int]]
    logit_rows: list[int]
    graph: bool


_step_decoder = msgspec.msgpack.Decoder(_WireStep)


@dataclass
class StepInput:
    """One step's packed tokens: sequence i adds `lens[i]` tokens from position `starts[i]`."""

    ids: np.ndarray  # int64 [T]
    positions: np.ndarray  # int64 [T]
    slots: np.ndarray  # int64 [T]: pool slot of each new token's K/V
    starts: list[int]
    lens: list[int]
    page_tables: list[list[int]]  # pages covering positions [0, start + len) of each sequence
    logit_rows: list[int]  # rows whose logits are sampled
    graph: bool  # a decode step replayed as a CUDA graph

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(_WireStep(self.ids.tobytes(), self.positions.tobytes(), self.slots.tobytes(),
                                                self.starts, self.lens, self.page_tables, self.logit_rows,
                                                self.graph))

    @classmethod
    def decode(cls, data: bytes) -> StepInput:
        w = _step_decoder.decode(data)
        return cls(*(np.frombuffer(b, dtype=np.int64).copy() for b in (w.ids, w.positions, w.slots)),
                   w.starts, w.lens, w.page_tables, w.logit_rows, w.graph)


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, backend: AttentionBackend, sampler: Sampler | None,
                 page_size: int, device: torch.device, graphs: DecodeGraphs | None = None) -> None:
        self.model = model
        self.backend = backend
        self.sampler = sampler  # rank 0's; the other ranks of a replica only run forward passes
        self.page_size = page_size
        self.device = device
        self.graphs = graphs
        self.broadcast = None  # under tensor parallelism: sends each step to the other ranks

    def prepare(self, out: SchedulerOutput) -> StepInput:
        ps = self.page_size
        chunks = out.chunks
        lens = [c.num_tokens for c in chunks]
        starts = [c.start for c in chunks]
        if all(n == 1 for n in lens):  # decode: one token each, built without per-request arrays
            tables = [c.request.pages[: c.start // ps + 1] for c in chunks]
            ids = [c.request.token_ids(c.start, c.start + 1)[0] for c in chunks]
            slots = [t[-1] * ps + s % ps for t, s in zip(tables, starts)]
            graph = self.graphs is not None and self.graphs.fits(len(chunks))
            return StepInput(np.asarray(ids, dtype=np.int64), np.asarray(starts, dtype=np.int64),
                             np.asarray(slots, dtype=np.int64), starts, lens, tables,
                             [i for i, c in enumerate(chunks) if c.samples], graph)
        ids, positions, slots, tables, logit_rows = [], [], [], [], []
        row = 0
        for chunk in chunks:
            req = chunk.request
            ids.extend(req.token_ids(chunk.start, chunk.end))
            pos = np.arange(chunk.start, chunk.end)
            positions.append(pos)
            slots.append(np.asarray(req.pages)[pos // ps] * ps + pos % ps)
            tables.append(req.pages[: -(-chunk.end // ps)])
            row += chunk.num_tokens
            if chunk.samples:
                logit_rows.append(row - 1)
        return StepInput(np.asarray(ids, dtype=np.int64), np.concatenate(positions).astype(np.int64),
                         np.concatenate(slots).astype(np.int64), starts, lens, tables, logit_rows, False)

    def forward(self, step: StepInput) -> torch.Tensor:
        """Logits of the step's sampled rows (every rank runs this on the same input)."""
        if step.graph:
            return self.graphs.run(step.ids, step.positions, step.slots, step.page_tables)

        def tensor(x) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.int64)).to(self.device, non_blocking=True)

        batch = ForwardBatch(input_ids=tensor(step.ids), positions=tensor(step.positions),
                             out_slots=tensor(step.slots), starts=step.starts, lens=step.lens,
                             page_tables=step.page_tables, logit_indices=tensor(step.logit_rows),
                             page_size=self.page_size)
        return self.model(batch, self.backend)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[Request, int]:
        """Run one step; return the token sampled for each request whose chunk samples."""
        step = self.prepare(out)
        if self.broadcast is not None:
            self.broadcast(step)
        logits = self.forward(step)
        sampling = [c.request for c in out.chunks if c.samples]
        if not sampling:
            return {}
        tokens = self.sampler(logits, [r.request_id for r in sampling], [r.sampling for r in sampling])
        return dict(zip(sampling, tokens.tolist()))
