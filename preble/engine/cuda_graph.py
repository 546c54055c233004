"""CUDA graphs for decode steps.

A decode step launches a few hundred small kernels; replaying them as one captured graph removes
the launch gaps that dominate small batches. One graph is captured per batch size in
`batch_sizes`; a step of B sequences runs the smallest graph of size G >= B, with rows B..G-1
padded: they write their K/V into a spare page no request owns and attend to that one slot.
Captured graphs read their inputs from static buffers that each step fills in place.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from .attention.triton_backend import TritonBackend, TritonPlan
from .batch import ForwardBatch
from .model.llama import LlamaForCausalLM
from .uploads import to_device


@dataclass(frozen=True)
class CudaGraphConfig:
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 224, 256)


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, backend: TritonBackend, config: CudaGraphConfig,
                 max_batch: int, max_pages_per_seq: int, spare_page: int) -> None:
        self.model, self.backend = model, backend
        self.sizes = sorted(s for s in config.batch_sizes if s <= max_batch) or [1]
        self.max_batch = self.sizes[-1]
        self.page_size = backend.pool.page_size
        self.spare_page = spare_page
        device = backend.device
        g = self.max_batch
        self.max_pages = max_pages_per_seq
        # Static inputs: ids, positions, slots (int64); kv_lens, page table (int32).
        self.ids = torch.zeros(g, dtype=torch.int64, device=device)
        self.positions = torch.zeros(g, dtype=torch.int64, device=device)
        self.slots = torch.full((g,), spare_page * self.page_size, dtype=torch.int64, device=device)
        self.kv_lens = torch.ones(g, dtype=torch.int32, device=device)
        self.page_table = torch.full((g, max_pages_per_seq), spare_page, dtype=torch.int32, device=device)
        self.ones = torch.ones(g, dtype=torch.int32, device=device)
        self.zeros = torch.zeros(g, dtype=torch.int32, device=device)
        self.cu_q = torch.arange(g + 1, dtype=torch.int32, device=device)
        self.rows = torch.arange(g, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        backend.reserve_decode_scratch(self.max_batch, model.config.num_heads)

    def _batch(self, size: int) -> tuple[ForwardBatch, TritonPlan]:
        batch = ForwardBatch(
            input_ids=self.ids[:size], positions=self.positions[:size], out_slots=self.slots[:size],
            starts=[0] * size, lens=[1] * size, page_tables=[], logit_indices=self.rows[:size],
            page_size=self.page_size)
        plan = TritonPlan(decode=True, page_size=self.page_size, out_slots=self.slots[:size],
                          page_table=self.page_table[:size], kv_lens=self.kv_lens[:size],
                          starts=self.zeros[:size], lens=self.ones[:size], cu_q=self.cu_q[: size + 1],
                          max_len_q=1, num_splits=self.backend.num_splits(size))
        return batch, plan

    @torch.inference_mode()
    def capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for size in reversed(self.sizes):  # largest first, so smaller ones reuse its memory
                batch, plan = self._batch(size)
                for _ in range(2):  # warm-up: compile kernels, settle allocations
                    self.model(batch, self.backend, plan)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.logits[size] = self.model(batch, self.backend, plan)
                self.graphs[size] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def fits(self, batch_size: int) -> bool:
        return batch_size <= self.max_batch

    def stage(self, ids: np.ndarray, positions: np.ndarray, slots: np.ndarray,
              page_tables: list[list[int]]) -> int:
        """Fill the static inputs for a decode step of B sequences (queued on the device behind
        the step before); return the graph size to replay."""
        b = len(ids)
        size = self.sizes[bisect.bisect_left(self.sizes, b)]
        device = self.ids.device
        dev = to_device(np.concatenate([ids, positions, slots, np.asarray(positions) + 1]), torch.int64, device)
        self.ids[:b].copy_(dev[:b])
        self.positions[:b].copy_(dev[b:2 * b])
        self.slots[:b].copy_(dev[2 * b:3 * b])
        self.kv_lens[:b].copy_(dev[3 * b:])
        width = max(len(t) for t in page_tables)
        table = np.full((b, width), self.spare_page, dtype=np.int32)
        for row, pages in enumerate(page_tables):
            table[row, :len(pages)] = pages
        self.page_table[:b, :width].copy_(to_device(table, torch.int32, device))
        if size > b:  # padded rows: the spare page, one key
            self.slots[b:size].fill_(self.spare_page * self.page_size)
            self.kv_lens[b:size].fill_(1)
            self.page_table[b:size, 0].fill_(self.spare_page)
        return size

    def replay(self, size: int, b: int) -> torch.Tensor:
        """Logits [B, V] of the staged step."""
        self.graphs[size].replay()
        return self.logits[size][:b]
