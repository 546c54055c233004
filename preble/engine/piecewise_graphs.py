"""CUDA graphs for steps that carry prompt tokens, captured in pieces around attention.

Such a step runs a dozen kernels per layer launched one by one from Python. For a short step (a
128-token prompt, a prompt's chunk beside a few decodes) launching them takes longer than running
them, so the device waits for the host. Attention cannot be captured for every layout (its grid
and metadata follow the step's sequences), but everything between two attentions can: for each
token count S of `token_sizes`, piece l runs layer l-1's output projection, norm and MLP, then
layer l's norm, q/k/v projection and RoPE, and stores layer l's new K/V; layer l's attention runs
eagerly between piece l and piece l+1 on the step's real rows. A step of T tokens replays the
pieces of the smallest S >= T; its rows T..S-1 are padding, whose K/V goes to a spare slot no
request owns and whose outputs are never read.

Pieces read and write static buffers (ids, positions, slots, RoPE angles, q, the attention output,
the residual stream and the last hidden states). Until `capture` runs they run eagerly, which is
how the CPU tests check the plumbing against the model's own forward pass.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .attention import AttentionBackend
from .batch import ForwardBatch
from .model.llama import LlamaForCausalLM
from .uploads import to_device


@dataclass(frozen=True)
class PiecewiseGraphConfig:
    # Token counts captured; a step runs the pieces of the smallest one that holds it.
    token_sizes: tuple[int, ...] = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class PiecewiseGraphs:
    def __init__(self, model: LlamaForCausalLM, backend: AttentionBackend, config: PiecewiseGraphConfig,
                 max_tokens: int, spare_slot: int) -> None:
        self.model, self.backend = model, backend
        self.layers = model.model.layers
        self.sizes = sorted(s for s in config.token_sizes if s <= max_tokens)
        if not self.sizes:
            raise ValueError(f"no piecewise graph size fits {max_tokens} tokens")
        self.max_tokens = n = self.sizes[-1]
        self.spare_slot = spare_slot
        mc = model.config
        device = backend.pool.k[0].device
        dtype = next(model.parameters()).dtype
        self.ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slots = torch.full((n,), spare_slot, dtype=torch.int64, device=device)
        self.cos = torch.zeros(n, mc.head_dim // 2, dtype=torch.float32, device=device)
        self.sin = torch.zeros_like(self.cos)
        self.q = torch.zeros(n, mc.num_heads, mc.head_dim, dtype=dtype, device=device)
        self.attn = torch.zeros_like(self.q)
        self.hidden = torch.zeros(n, mc.hidden_size, dtype=dtype, device=device)
        self.residual = torch.zeros_like(self.hidden)
        # pieces[size][l]: piece l for `size` tokens (l = 0..num_layers), eager until captured
        self.pieces: dict[int, list[Callable[[], object]]] = {
            s: [lambda s=s, i=i: self._piece(i, s) for i in range(len(self.layers) + 1)] for s in self.sizes}

    def fits(self, num_tokens: int) -> bool:
        return num_tokens <= self.max_tokens

    def _piece(self, index: int, size: int) -> None:
        """Layer index-1's work after its attention, then layer index's before it (index 0: the
        embedding and RoPE angles first; index == num_layers: the last layer's output kept)."""
        layers = self.layers
        if index == 0:
            x, residual = self.model.model.embed_tokens(self.ids[:size]), None
            cos, sin = self.model.rotary(self.positions[:size])
            self.cos[:size].copy_(cos)
            self.sin[:size].copy_(sin)
        else:
            x, residual = layers[index - 1].after_attention(self.attn[:size], self.residual[:size])
        if index == len(layers):
            self.hidden[:size].copy_(x)
            self.residual[:size].copy_(residual)
            return
        q, k, v, residual = layers[index].before_attention(x, residual, self.cos[:size], self.sin[:size])
        self.backend.store(index, k, v, self.slots[:size])
        self.q[:size].copy_(q)
        self.residual[:size].copy_(residual)

    @torch.inference_mode()
    def capture(self) -> None:
        """Replace every piece by its CUDA graph (one memory pool for all: pieces run one at a
        time, and everything that outlives a piece is in the static buffers)."""
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for size in reversed(self.sizes):  # largest first, so smaller ones reuse its memory
                graphs = []
                for piece in self.pieces[size]:
                    piece()  # warm-up: compile kernels, settle allocations
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=stream):
                        piece()
                    graphs.append(graph.replay)
                self.pieces[size] = graphs
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def stage(self, ids: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> int:
        """Fill the static inputs for a step of T tokens; padding rows store to the spare slot.
        Returns the size to run."""
        t = len(ids)
        size = self.sizes[bisect.bisect_left(self.sizes, t)]
        dev = to_device(np.concatenate([ids, positions, slots]), torch.int64, self.ids.device)
        self.ids[:t].copy_(dev[:t])
        self.positions[:t].copy_(dev[t:2 * t])
        self.slots[:t].copy_(dev[2 * t:])
        if size > t:
            self.slots[t:size].fill_(self.spare_slot)
        return size

    def run(self, size: int, starts: list[int], lens: list[int], page_tables: list[list[int]],
            logit_rows: torch.Tensor, page_size: int) -> torch.Tensor:
        """Logits of `logit_rows` for the staged step (attention eager, on its real rows)."""
        t = sum(lens)
        batch = ForwardBatch(input_ids=self.ids[:t], positions=self.positions[:t], out_slots=self.slots[:t],
                             starts=starts, lens=lens, page_tables=page_tables, logit_indices=logit_rows,
                             page_size=page_size)
        plan = self.backend.plan(batch)
        pieces = self.pieces[size]
        for index, layer in enumerate(self.layers):
            pieces[index]()
            self.backend.attend(index, self.q[:t], plan, layer.self_attn.scale, out=self.attn[:t])
        pieces[-1]()
        return self.model.logits(self.hidden[:t], self.residual[:t], logit_rows)
