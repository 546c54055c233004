"""The architecture facts the engine needs, read from a Hugging Face `config.json`.

Both spellings of RoPE settings are accepted: `rope_theta` + `rope_scaling` (transformers 4) and
`rope_parameters` (transformers 5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes; torch itself is imported lazily


class UnsupportedModel(ValueError):
    """The folder holds a model this engine cannot run; the message says what is missing."""


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v
    qk_norm: bool = False  # Qwen3: RMSNorm on each head of q and k
    rope_scaling: dict = field(default_factory=dict)
    eos_token_ids: tuple[int, ...] = ()
    dtype: str = "bfloat16"

    @property
    def family(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture]

    def context_window(self, requested: int | None = None) -> int:
        """The usable context: what was asked for, never more than the model's positions."""
        return min(requested or self.max_position_embeddings, self.max_position_embeddings)

    @property
    def torch_dtype(self):
        import torch  # routers read configs too and must not pay for torch

        return getattr(torch, self.dtype)

    @classmethod
    def from_dict(cls, cfg: dict, generation_cfg: dict | None = None) -> ModelConfig:
        archs = cfg.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise UnsupportedModel(
                f"architectures {archs} not supported; supported: {sorted(SUPPORTED_ARCHITECTURES)}")
        if cfg.get("use_sliding_window") or (arch == "MistralForCausalLM" and cfg.get("sliding_window")):
            # Sliding-window attention is not implemented; refusing beats silently wrong outputs
            # on long prompts.
            raise UnsupportedModel("sliding-window attention is not supported")
        heads = cfg["num_attention_heads"]
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", None) or cfg.get("rope_theta", 10000.0)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise UnsupportedModel(f"RoPE scaling {rope_type!r} is not supported")
        rope["rope_type"] = rope_type
        family = SUPPORTED_ARCHITECTURES[arch]
        eos = (generation_cfg or {}).get("eos_token_id", cfg.get("eos_token_id"))
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").removeprefix("torch.")
        return cls(
            architecture=arch,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=family == "qwen2" or bool(cfg.get("attention_bias", False)),
            qk_norm=family == "qwen3",
            rope_scaling=rope,
            eos_token_ids=eos_ids,
            dtype=dtype if dtype in DTYPES else "bfloat16",
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UnsupportedModel(f"{path} has no config.json")
        cfg = json.loads((path / "config.json").read_text())
        gen_path = path / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.is_file() else None
        return cls.from_dict(cfg, gen)
