"""Real architectures with random weights, for performance work without downloads.

`random:NAME` as a model path selects one; the weights are drawn on the target device in
seconds. Shapes are those of the published checkpoints' config.json files.
"""

from __future__ import annotations

import torch

from ...models.config import ModelConfig, UnsupportedModel

RANDOM_PREFIX = "random:"

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
DEFAULT_ROPE = {"rope_type": "default"}  # what ModelConfig.from_dict reads from a config.json without scaling

PRESETS: dict[str, ModelConfig] = {
    "llama3-8b": ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=131072, eos_token_ids=(128001, 128009), rope_scaling=LLAMA3_ROPE),
    "llama3-70b": ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
        num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=131072, eos_token_ids=(128001, 128009), rope_scaling=LLAMA3_ROPE),
    "mistral-7b": ModelConfig(
        architecture="MistralForCausalLM", vocab_size=32768, hidden_size=4096, intermediate_size=14336,
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=1000000.0,
        max_position_embeddings=32768, eos_token_ids=(2,), rope_scaling=DEFAULT_ROPE),
    "qwen2.5-0.5b": ModelConfig(
        architecture="Qwen2ForCausalLM", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=True, attention_bias=True,
        eos_token_ids=(151643, 151645), rope_scaling=DEFAULT_ROPE),
    "qwen2.5-7b": ModelConfig(
        architecture="Qwen2ForCausalLM", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, attention_bias=True, eos_token_ids=(151643, 151645),
        rope_scaling=DEFAULT_ROPE),
    "qwen3-8b": ModelConfig(
        architecture="Qwen3ForCausalLM", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
        num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=40960, qk_norm=True, eos_token_ids=(151645,), rope_scaling=DEFAULT_ROPE),
}


def is_random(model: str) -> bool:
    return model.startswith(RANDOM_PREFIX)


def preset(model: str) -> ModelConfig:
    name = model.removeprefix(RANDOM_PREFIX)
    try:
        return PRESETS[name]
    except KeyError:
        raise UnsupportedModel(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


@torch.no_grad()
def init_random_(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Fill weights in place: N(0, std) for matrices and biases, ones for norms (as trained models
    roughly look), drawn on the model's device."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=gen)
