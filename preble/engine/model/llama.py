"""A Llama-family decoder (Llama 2/3, Mistral, Qwen2/2.5, Qwen3) over packed token batches.

One class covers the family: Qwen2 adds a bias to q/k/v, Qwen3 normalises each head of q and
k, Llama 3 rescales RoPE frequencies. q/k/v and gate/up are fused into one matrix each (the
loader fills the slices), so a layer runs four matmuls instead of seven. Under tensor
parallelism the model is built in its rank's local shape (see `parallel.py`); the attention and
MLP blocks then end in an all-reduce, and the vocabulary is split over the ranks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...models.config import ModelConfig
from ..attention import AttentionBackend
from ..batch import ForwardBatch
from ..parallel import TensorParallel, local_config

fused_ops = None  # the Triton module, imported by `use_fused_ops` on CUDA machines


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.fused = False  # one Triton pass instead of a chain of torch kernels (CUDA)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Normalise x; with `residual`, normalise x + residual and return (normed, x + residual)."""
        if self.fused:
            normed, summed = fused_ops.rms_norm(x, self.weight, self.eps, residual)
            return normed if residual is None else (normed, summed)
        if residual is not None:
            x = x + residual
            return self._norm(x), x
        return self._norm(x)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 like the reference implementation, so fp32 outputs match exactly
        # and half-precision ones do not lose range.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies of RoPE, with the checkpoint's scaling applied."""
    d = config.head_dim
    # float32 throughout, as the reference does, so that fp32 outputs match it bit for bit.
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = config.rope_scaling
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        inv = inv / scaling["factor"]
    elif kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        # Long wavelengths are stretched by `factor`, short ones kept, the band between blended.
        smooth = ((old_len / wavelen) - low) / (high - low)
        blended = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > old_len / low, inv / factor,
                          torch.where(wavelen < old_len / high, inv, blended))
    return inv


class RotaryEmbedding(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head (the Hugging Face layout). x: [T, H, D]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


class VocabEmbedding(nn.Module):
    """Token embedding; each rank holds its slice of the vocabulary's rows."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.start, end = tp.vocab_rows(vocab_size)
        self.weight = nn.Parameter(torch.empty(end - self.start, hidden_size))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(out.masked_fill_(outside[:, None], 0))


class LMHead(nn.Module):
    """Output projection; each rank computes the logits of its vocabulary slice, then all gather."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp, self.vocab_size = tp, vocab_size
        start, end = tp.vocab_rows(vocab_size)
        self.weight = nn.Parameter(torch.empty(end - start, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_gather_last(F.linear(x, self.weight))[..., : self.vocab_size]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, tp: TensorParallel) -> None:
        super().__init__()
        self.layer, self.tp = layer, tp
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size,
                                  bias=config.attention_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm
        self.scale = self.head_dim ** -0.5
        self.fused = False

    def project(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, Hq, D], k and v [T, Hkv, D] of the normed hidden states, RoPE applied."""
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.fused:
            fused_ops.apply_rope_(q, k, cos, sin)
        else:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(self.o_proj(attn.reshape(-1, self.q_size)))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.intermediate = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate, bias=False)
        self.down_proj = nn.Linear(self.intermediate, config.hidden_size, bias=False)
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.fused:
            h = fused_ops.silu_mul(gate_up)
        else:
            gate, up = gate_up.split(self.intermediate, dim=-1)
            h = F.silu(gate) * up
        return self.tp.all_reduce(self.down_proj(h))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, tp: TensorParallel) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer, tp)
        self.mlp = MLP(config, tp)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, residual, cos, sin, backend, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's MLP output, the residual stream before it): adding the two is
        left to the next norm, which fuses it."""
        q, k, v, residual = self.before_attention(x, residual, cos, sin)
        attn = backend.forward(self.self_attn.layer, q, k, v, plan, self.self_attn.scale)
        return self.after_attention(attn, residual)

    def before_attention(self, x, residual, cos, sin):
        """q, k, v and the residual stream from the layer before's output (x, residual)."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm(x, residual)
        return (*self.self_attn.project(h, cos, sin), residual)

    def after_attention(self, attn, residual) -> tuple[torch.Tensor, torch.Tensor]:
        h, residual = self.post_attention_layernorm(self.self_attn.output(attn), residual)
        return self.mlp(h), residual


class DecoderModel(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, tp)
        self.layers = nn.ModuleList(DecoderLayer(config, i, tp) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Parameter names follow Hugging Face's (after fusing), so checkpoints load by name.
    `config` is the whole model's; `self.config` this rank's share of it."""

    def __init__(self, config: ModelConfig, tp: TensorParallel = TensorParallel()) -> None:
        super().__init__()
        self.config = config = local_config(config, tp)
        self.tp = tp
        self.model = DecoderModel(config, tp)
        self.rotary = RotaryEmbedding(config)
        self.lm_head = LMHead(config.vocab_size, config.hidden_size, tp)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, batch: ForwardBatch, backend: AttentionBackend, plan=None) -> torch.Tensor:
        """Run the packed batch; return float32 logits for the rows in `batch.logit_indices`.

        `plan` is the backend's plan when the caller made it already (CUDA graphs do)."""
        plan = backend.plan(batch) if plan is None else plan
        cos, sin = self.rotary(batch.positions)
        x, residual = self.model.embed_tokens(batch.input_ids), None
        for layer in self.model.layers:
            x, residual = layer(x, residual, cos, sin, backend, plan)
        return self.logits(x, residual, batch.logit_indices)

    def logits(self, x: torch.Tensor, residual: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """float32 logits of `rows` from the last layer's output and residual stream."""
        x, _ = self.model.norm(x[rows], residual[rows])
        return self.lm_head(x).float()

    def use_fused_ops(self) -> None:
        """Switch norms, RoPE and SiLU-mul to the Triton kernels (CUDA only)."""
        global fused_ops
        from . import fused_ops

        for module in self.modules():
            if hasattr(module, "fused"):
                module.fused = True
