"""Turns a scheduler step into tensors, runs the model and samples.

A step is first laid out as a `StepInput` (plain arrays), which is all any rank needs to run it:
under tensor parallelism rank 0 sends it to the other ranks (`tp_ranks.py`), and every rank runs
the same forward pass on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import torch

from ..core.request import Request
from ..core.scheduler import ScheduledChunk, SchedulerOutput
from .attention import AttentionBackend
from .batch import ForwardBatch
from .model.llama import LlamaForCausalLM
from .sampler import Sampler
from .uploads import to_device

if TYPE_CHECKING:  # CUDA graphs need Triton, which CPU installs lack
    from .cuda_graph import DecodeGraphs
    from .piecewise_graphs import PiecewiseGraphs


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
    # Rows whose token the last launched step sampled and the host does not know yet: row
    # `pending_rows[i]` takes that step's sampled token `pending_sources[i]` on the device. Only
    # rank 0 holds sampled tokens, so a replica split over ranks never has pending rows.
    pending_rows: list[int] = field(default_factory=list)
    pending_sources: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(_WireStep(self.ids.tobytes(), self.positions.tobytes(), self.slots.tobytes(),
                                                self.starts, self.lens, self.page_tables, self.logit_rows,
                                                self.graph))

    @classmethod
    def decode(cls, data: bytes) -> StepInput:
        w = _step_decoder.decode(data)
        return cls(*(np.frombuffer(b, dtype=np.int64).copy() for b in (w.ids, w.positions, w.slots)),
                   w.starts, w.lens, w.page_tables, w.logit_rows, w.graph)


@dataclass
class LaunchedStep:
    """A step whose sampled tokens (`tokens`, in order of `sampling`) are on their way to the
    host; they are there once `copied` has fired (None: they already are)."""

    sampling: list[Request]
    tokens: torch.Tensor | None
    copied: torch.cuda.Event | None = None


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, backend: AttentionBackend, sampler: Sampler | None,
                 page_size: int, device: torch.device, graphs: DecodeGraphs | None = None,
                 piecewise: PiecewiseGraphs | None = None) -> None:
        self.model = model
        self.backend = backend
        self.sampler = sampler  # rank 0's; the other ranks of a replica only run forward passes
        self.page_size = page_size
        self.device = device
        self.graphs = graphs
        self.piecewise = piecewise  # steps with prompt tokens (and decodes past `graphs`), one rank only
        self.broadcast = None  # under tensor parallelism: sends each step to the other ranks
        # The last launched step's sampled tokens, on the device, and each sampling request's row.
        self._last_tokens: torch.Tensor | None = None
        self._last_rows: dict[Request, int] = {}

    def prepare(self, out: SchedulerOutput) -> StepInput:
        chunks = out.chunks
        if all(c.num_tokens == 1 for c in chunks):
            return self._prepare_decode(chunks)
        ps = self.page_size
        ids, positions, slots, tables, logit_rows, rows, sources = [], [], [], [], [], [], []
        for chunk in chunks:
            req = chunk.request
            known = req.token_ids(chunk.start, chunk.end)
            ids.extend(known)
            if len(known) < chunk.num_tokens:  # the newest token is pending
                rows.append(len(ids))
                sources.append(self._last_rows[req])
                ids.append(0)
            pos = np.arange(chunk.start, chunk.end)
            positions.append(pos)
            slots.append(np.asarray(req.pages)[pos // ps] * ps + pos % ps)
            tables.append(req.pages[: -(-chunk.end // ps)])
            if chunk.samples:
                logit_rows.append(len(ids) - 1)
        return StepInput(np.asarray(ids, dtype=np.int64), np.concatenate(positions).astype(np.int64),
                         np.concatenate(slots).astype(np.int64), [c.start for c in chunks],
                         [c.num_tokens for c in chunks], tables, logit_rows, False, rows, sources)

    def _prepare_decode(self, chunks: list[ScheduledChunk]) -> StepInput:
        """One token each, built without per-request arrays."""
        ps = self.page_size
        starts = [c.start for c in chunks]
        tables = [c.request.pages[: c.start // ps + 1] for c in chunks]
        slots = [t[-1] * ps + s % ps for t, s in zip(tables, starts)]
        ids, rows, sources = [], [], []
        for row, c in enumerate(chunks):
            req = c.request
            if c.start == req.num_resolved_tokens:  # its token is the last step's, still pending
                rows.append(row)
                sources.append(self._last_rows[req])
                ids.append(0)
            else:
                ids.append(req.token_ids(c.start, c.start + 1)[0])
        graph = self.graphs is not None and self.graphs.fits(len(chunks))
        return StepInput(np.asarray(ids, dtype=np.int64), np.asarray(starts, dtype=np.int64),
                         np.asarray(slots, dtype=np.int64), starts, [1] * len(chunks), tables,
                         [i for i, c in enumerate(chunks) if c.samples], graph, rows, sources)

    def forward(self, step: StepInput) -> torch.Tensor:
        """Logits of the step's sampled rows (every rank runs this on the same input)."""
        if step.graph:
            size = self.graphs.stage(step.ids, step.positions, step.slots, step.page_tables)
            self._fill_pending(self.graphs.ids, step)
            return self.graphs.replay(size, len(step.ids))

        def tensor(x) -> torch.Tensor:
            return to_device(x, torch.int64, self.device)

        if self.piecewise is not None and self.piecewise.fits(len(step.ids)):
            size = self.piecewise.stage(step.ids, step.positions, step.slots)
            self._fill_pending(self.piecewise.ids, step)
            return self.piecewise.run(size, step.starts, step.lens, step.page_tables, tensor(step.logit_rows),
                                      self.page_size)
        batch = ForwardBatch(input_ids=tensor(step.ids), positions=tensor(step.positions),
                             out_slots=tensor(step.slots), starts=step.starts, lens=step.lens,
                             page_tables=step.page_tables, logit_indices=tensor(step.logit_rows),
                             page_size=self.page_size)
        self._fill_pending(batch.input_ids, step)
        return self.model(batch, self.backend)

    def _fill_pending(self, ids: torch.Tensor, step: StepInput) -> None:
        """Copy the last step's sampled tokens into the rows that wait for them, on the device."""
        rows, sources = step.pending_rows, step.pending_sources
        if not rows:
            return
        n = len(rows)
        if rows[-1] == n - 1 and rows == sources == list(range(n)):  # the same requests in the same order
            ids[:n].copy_(self._last_tokens[:n])
            return
        index = to_device([rows, sources], torch.int64, self.device)
        ids.index_copy_(0, index[0], self._last_tokens.index_select(0, index[1]))

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput) -> LaunchedStep:
        """Queue one step and its sampling on the device; the tokens stay there for the next step
        and are copied to the host in the background."""
        step = self.prepare(out)
        if self.broadcast is not None:
            self.broadcast(step)
        logits = self.forward(step)
        sampling = [c.request for c in out.chunks if c.samples]
        if not sampling:
            return LaunchedStep(sampling, None)
        tokens = self.sampler(logits, [r.request_id for r in sampling], [r.sampling for r in sampling])
        self._last_rows = {req: row for row, req in enumerate(sampling)}
        self._last_tokens = tokens
        if tokens.device.type != "cuda":
            return LaunchedStep(sampling, tokens)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return LaunchedStep(sampling, host, copied)

    @staticmethod
    def collect(launched: LaunchedStep) -> dict[Request, int]:
        """The token sampled for each request of a launched step whose chunk samples (waits for it)."""
        if launched.copied is not None:
            launched.copied.synchronize()
        if launched.tokens is None:
            return {}
        return dict(zip(launched.sampling, launched.tokens.tolist()))
