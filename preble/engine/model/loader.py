"""Load a Hugging Face checkpoint folder (*.safetensors) into `LlamaForCausalLM`.

The model is built on the meta device, materialised on the target device with no init work, and
filled tensor by tensor, so loading costs one read of the weights. Separate q/k/v and gate/up
checkpoint tensors land in slices of the fused parameters. A tensor-parallel rank reads only its
shard of each tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ...models.config import ModelConfig, UnsupportedModel
from ..parallel import TensorParallel, shard_of
from .llama import LlamaForCausalLM, rope_inv_freq

# checkpoint name suffix -> (fused parameter suffix, index of the slice it fills)
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}
_IGNORED = ("rotary_emb.inv_freq",)


def _fused_target(name: str, config: ModelConfig) -> tuple[str, slice] | None:
    """Map a checkpoint tensor name to (fused parameter name, rows it fills), if it is fused."""
    for src, (dst, idx) in _FUSED.items():
        marker = f".{src}."
        if marker in name:
            q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
            sizes = [q, kv, kv] if dst.endswith("qkv_proj") else [config.intermediate_size] * 2
            start = sum(sizes[:idx])
            return name.replace(marker, f".{dst}."), slice(start, start + sizes[idx])
    return None


def build_model(config: ModelConfig, device: torch.device | str, dtype: torch.dtype,
                tp: TensorParallel = TensorParallel()) -> LlamaForCausalLM:
    """An uninitialised model (this rank's share of it) on `device`; weights are garbage until
    loaded or initialised."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config, tp)
    model = model.to_empty(device=device).to(dtype)
    # Buffers built on meta carry no values, and RoPE frequencies stay float32 in any dtype.
    model.rotary.inv_freq = rope_inv_freq(config).to(device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def _read(f, name: str, config: ModelConfig, tp: TensorParallel) -> torch.Tensor:
    """This rank's shard of a checkpoint tensor (rows past its end, vocabulary padding, are zeros)."""
    sl = f.get_slice(name)
    shape = tuple(sl.get_shape())
    shard = shard_of(name, shape, config, tp)
    if shard is None:
        return sl[:]
    dim, start, end = shard
    part = sl[start:min(end, shape[0])] if dim == 0 else sl[:, start:end]
    if part.shape[dim] < end - start:
        pad = list(part.shape)
        pad[dim] = end - start - part.shape[dim]
        part = torch.cat([part, part.new_zeros(pad)], dim=dim)
    return part


def load_model(path: str | Path, config: ModelConfig, device: torch.device | str,
               dtype: torch.dtype, tp: TensorParallel = TensorParallel()) -> LlamaForCausalLM:
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UnsupportedModel(f"no *.safetensors in {path}; pass --load-format dummy for random weights")
    model = build_model(config, device, dtype, tp)
    params = dict(model.named_parameters())
    filled = dict.fromkeys(params, 0)
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name.endswith(_IGNORED) or (config.tie_word_embeddings and name == "lm_head.weight"):
                        continue
                    tensor = _read(f, name, config, tp)
                    target, rows = _fused_target(name, model.config) or (name, slice(None))
                    if target not in params:
                        raise UnsupportedModel(f"unexpected tensor {name} in {file.name}")
                    dest = params[target][rows]
                    if dest.shape != tensor.shape:
                        raise UnsupportedModel(
                            f"{name}: shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
                    dest.copy_(tensor)
                    filled[target] += tensor.numel()
    missing = [n for n, p in params.items() if filled[n] != p.numel()]
    if missing:
        raise UnsupportedModel(f"checkpoint lacks weights for {len(missing)} parameters, e.g. {missing[:3]}")
    return model
