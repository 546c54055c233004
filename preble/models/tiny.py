"""Tiny random Hugging Face checkpoints, one per supported architecture, written offline in milliseconds.

They let tests compare preble's engine against `transformers` token by token without downloading anything:
the weights are random but deterministic for a seed, and large enough that greedy next-token choices are not
decided by float noise. Each folder is a normal Hub-style checkpoint (config.json, model.safetensors,
generation_config.json, tokenizer files), so it exercises the same loading path as a real model.
Only the first call in a process is slow (~2 s), spent importing the transformers model classes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

from .hf_tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, byte_level, prepend_bos, save_tokenizer

FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3")

DEFAULT_VOCAB_SIZE = 512
# Std of every weight and bias. At 0.02 (the HF default) the median top-1/top-2 logit gap is ~0.03 and ~1.5%
# of positions are under 1e-3, close enough for float-order noise to flip greedy picks; at 0.2 the median gap is
# ~0.35 with <1% under 1e-3, and attention is peaked but not one-hot (mean max weight ~0.4 over 48 keys).
INIT_STD = 0.2
# RMSNorm weights are 1 + NORM_STD * N(0, 1), so an implementation that ignores a norm weight is caught.
NORM_STD = 0.1

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    initializer_range=INIT_STD,
)

# family -> (HF model_type, family-specific config). transformers 5 spells RoPE settings as one
# `rope_parameters` dict that includes `rope_theta` (legacy `rope_scaling` / top-level `rope_theta` are
# converted on load). original_max_position_embeddings=64 puts the llama3 smoothing band (wavelengths 16..64)
# inside head_dim 16's wavelength range, so scaling changes some frequencies and leaves others alone.
_FAMILY_CONFIG: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
    "llama3": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
    "mistral": (
        "mistral",
        {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "sliding_window": None},
    ),
    "qwen2": (
        "qwen2",
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "use_sliding_window": False},
    ),
    "qwen3": (
        "qwen3",
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "use_sliding_window": False},
    ),
}

_CORPUS = """\
The little library at the end of Mill Street opens at nine in the morning and closes at six in the evening.
On rainy days the reading room fills with students, retired teachers and children who have nowhere else to go.
The librarian, a patient woman named Clara, knows where every book is kept and who borrowed it last.
She says that a good question is worth more than a quick answer, and she means it.
When the heating fails in winter, people keep their coats on and keep reading anyway.

A server that answers questions for many people at once must be careful with its memory.
Each request carries a prompt, and many prompts begin with the same long instructions or the same document.
If the server remembers the work it already did for a shared beginning, it can skip that work next time.
The hard part is deciding where to send each new request: to the machine that remembers the most,
or to the machine that is least busy right now. A good scheduler weighs both and changes its mind slowly.

The river was low that summer, and the boats stayed tied to the wooden posts along the bank.
Farmers watched the sky every evening, hoping for clouds that never came.
In the village square the old men argued about the weather, the price of bread and the football results.
By the end of August the first storm arrived, and the whole town stood in the street to feel the rain.
Within a week the fields were green again and nobody remembered how worried they had been.

To bake simple bread, mix four cups of flour, one spoon of salt, one spoon of yeast and two cups of warm water.
Knead the dough for ten minutes, then let it rest in a warm place until it has doubled in size.
Shape it into a loaf, put it in a hot oven and bake it for about forty minutes.
The bread is ready when the crust is brown and the bottom sounds hollow when you knock on it.
Let it cool before you cut it, even though the smell makes waiting very difficult.

What is the capital of France? The capital of France is Paris.
How many days are there in a week? There are seven days in a week.
Can you write a short poem about the sea? The sea is grey, the sea is wide, it takes the sand with every tide.
Please summarize the story in one sentence. A tired traveller finds shelter, rests, and continues her journey.
Thank you for your help! You are welcome, and have a nice day.

Numbers appear everywhere: 1, 2, 3, 10, 42, 100, 2024, 3.14 and 0.5 are all common in ordinary text.
Lists, dates like 12 May 1999, times like 7:30, and prices like $19.99 should all be split sensibly.
Code sometimes appears too, for example: def add(a, b): return a + b, or x = [1, 2, 3].
"""


@functools.cache
def _trained_tokenizer_json(vocab_size: int) -> str:
    """Train once per vocab size per process; the JSON string is immutable, so the cache cannot be corrupted."""
    tokenizer = byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS_TOKEN, EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable, so no <unk>
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer)
    prepend_bos(tokenizer)
    return tokenizer.to_str()


def train_tiny_tokenizer(out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Write a byte-level BPE tokenizer trained on a small built-in corpus to `out_dir` and return it.

    The real vocabulary can be a little smaller than `vocab_size` when the corpus runs out of merges.
    """
    return save_tokenizer(Tokenizer.from_str(_trained_tokenizer_json(vocab_size)), out_dir)


def write_tiny_model(
    out_dir: str | Path,
    family: str,
    *,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    dtype: str = "float32",
    **config_overrides: Any,
) -> Path:
    """Write a tiny random Hugging Face model folder of `family` and return its path.

    The folder holds config.json, model.safetensors, generation_config.json and the tokenizer files, and is
    deterministic for a given seed. `config_overrides` replace any config field, e.g. num_hidden_layers=3;
    `vocab_size` may exceed the tokenizer's (padded embeddings, as in Qwen checkpoints) but not undercut it.
    """
    if family not in _FAMILY_CONFIG:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(_DTYPES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tiny_tokenizer(out_dir)
    special_ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_type, family_config = _FAMILY_CONFIG[family]
    fields = {
        **_SHAPE,
        **family_config,
        **special_ids,
        "vocab_size": len(tokenizer),
        "tie_word_embeddings": tie_word_embeddings,
        **config_overrides,
    }
    if fields["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {fields['vocab_size']} is smaller than the tokenizer's {len(tokenizer)}")
    config = AutoConfig.for_model(model_type, **fields)
    with torch.random.fork_rng(devices=[]):  # transformers' own init draws from the caller's global RNG
        model = AutoModelForCausalLM.from_config(config)
    _randomize(model, seed, std=config.initializer_range)
    model.generation_config = GenerationConfig(**special_ids)
    model.to(_DTYPES[dtype]).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int, *, std: float) -> None:
    """Overwrite every parameter from our own generator so the weights depend only on the seed and parameter
    names, not on transformers' init code; tied parameters are visited once."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        param.copy_(1.0 + NORM_STD * noise if name.endswith("norm.weight") else std * noise)
