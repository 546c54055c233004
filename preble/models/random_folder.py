"""Hugging Face model folders without weights, for serving a real architecture with random weights.

A folder holds config.json, generation_config.json and a tokenizer for one of the `random:` presets
(preble/engine/model/presets.py), and no *.safetensors: a worker started on it with
`--load-format dummy` draws the weights at load time, as `random:NAME` does. It is what workers and
`preble serve` need on a machine without model files, where `random:NAME` alone (no tokenizer) is
not enough.

The tokenizer's vocabulary fills the model's, so decoding random token ids costs what it costs with
a real tokenizer: a byte-level BPE whose first 256 ordinary ids are the bytes and whose other ids
are deterministic merges of earlier tokens (lowercase pieces of 2-10 characters, half of them after
a space), with the special tokens where the preset's eos ids say.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models

from .config import ModelConfig
from .hf_tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, byte_level, prepend_bos, save_tokenizer

# Relative share of merged tokens of each length in characters (a leading space counts as one):
# mostly 4-8, as in trained English vocabularies.
MERGE_LENGTHS = {2: 1, 3: 4, 4: 8, 5: 10, 6: 10, 7: 9, 8: 7, 9: 5, 10: 4}
SPACE_LED_SHARE = 0.5  # share of merged tokens that begin with a space (a word start)
MAX_TRIES_PER_TOKEN = 10  # draws per missing token before a length's share passes to the next length
SECOND_EOS_TOKEN = "<|eot_id|>"  # Llama 3's end of turn


def byte_chars() -> list[str]:
    """The byte-level alphabet in byte order: printable Latin-1 bytes stand for themselves, the
    others for the code points from 256 on (the mapping of GPT-2's ByteLevel)."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def special_tokens(vocab_size: int, eos_ids: tuple[int, ...]) -> dict[int, str]:
    """id -> special token. BOS sits just below the first eos id; the block from there to the top of
    the vocabulary (eos ids in its upper half, as in Llama 3 and Qwen) or from 0 to the last eos id
    (eos ids at the bottom, as in Mistral) is special: the eos ids, a pad and reserved tokens."""
    if not eos_ids or min(eos_ids) < 1 or max(eos_ids) >= vocab_size:
        raise ValueError(f"eos ids {eos_ids} leave no room for a BOS below them in a vocabulary of {vocab_size}")
    bos = min(eos_ids) - 1
    block = range(bos, vocab_size) if bos >= vocab_size // 2 else range(0, max(eos_ids) + 1)
    eos_names = [EOS_TOKEN, SECOND_EOS_TOKEN, *(f"<|eot_id_{k}|>" for k in range(2, len(eos_ids)))]
    roles = {bos: BOS_TOKEN, **dict(zip(sorted(eos_ids), eos_names))}
    free = [i for i in block if i not in roles]
    if not free:
        raise ValueError(f"eos ids {eos_ids} leave no room for BOS and a pad token")
    roles[free[0]] = PAD_TOKEN
    reserved = (i for i in block if i not in roles)
    return {**roles, **{i: f"<|reserved_special_token_{k}|>" for k, i in enumerate(reserved)}}


def synthetic_merges(count: int, seed: int) -> list[tuple[str, str]]:
    """`count` BPE merges, each joining two shorter tokens into a new one (a lowercase piece, or a
    space followed by one), made length by length so that every token draws on all shorter ones.
    Lengths too few to fill their share (2 and 3 characters) pass the rest on to longer ones."""
    chars = byte_chars()
    space = chars[ord(" ")]
    pieces = {1: [chars[b] for b in range(ord("a"), ord("z") + 1)]}  # by length; no space
    spaced = {1: [space]}  # by length; a space and a piece
    rng = random.Random(seed)
    merges: list[tuple[str, str]] = []
    made: set[str] = set()
    total, share = sum(MERGE_LENGTHS.values()), 0
    for length, weight in MERGE_LENGTHS.items():
        share += weight
        goal = count * share // total
        for _ in range(MAX_TRIES_PER_TOKEN * (goal - len(merges))):
            if len(merges) == goal:
                break
            cut = rng.randrange(1, length)
            left = rng.choice((spaced if rng.random() < SPACE_LED_SHARE else pieces)[cut])
            right = rng.choice(pieces[length - cut])
            if left + right not in made:
                made.add(left + right)
                merges.append((left, right))
                (spaced if left[0] == space else pieces).setdefault(length, []).append(left + right)
    if len(merges) < count:
        raise ValueError(f"{count} merges of at most {max(MERGE_LENGTHS)} characters are too many")
    return merges


def build_tokenizer(vocab_size: int, eos_ids: tuple[int, ...], seed: int) -> Tokenizer:
    """A byte-level BPE tokenizer of exactly `vocab_size` tokens (see the module's docstring)."""
    specials = special_tokens(vocab_size, eos_ids)
    ordinary = [i for i in range(vocab_size) if i not in specials]
    merges = synthetic_merges(len(ordinary) - 256, seed)
    names = byte_chars() + [left + right for left, right in merges]
    vocab = {**dict(zip(names, ordinary)), **{name: i for i, name in specials.items()}}
    tokenizer = byte_level(Tokenizer(models.BPE(vocab=vocab, merges=merges)))
    # Already in the vocabulary, so they keep their ids; as added tokens they are never split or merged.
    tokenizer.add_special_tokens([AddedToken(specials[i], special=True, normalized=False) for i in sorted(specials)])
    prepend_bos(tokenizer)
    return tokenizer


def _eos_field(eos_ids: tuple[int, ...]) -> int | list[int]:
    """eos_token_id as Hugging Face files write it: a number, or a list when there are several."""
    return eos_ids[0] if len(eos_ids) == 1 else list(eos_ids)


def hf_config(mc: ModelConfig, bos_id: int) -> dict:
    """config.json for `mc`, spelled as the published checkpoints of its architecture spell it."""
    scaled = mc.rope_scaling.get("rope_type", "default") != "default"
    window = {"mistral": {"sliding_window": None}, "qwen2": {"use_sliding_window": False},
              "qwen3": {"use_sliding_window": False}}.get(mc.family, {})
    return {
        "architectures": [mc.architecture],
        "model_type": mc.family,
        "vocab_size": mc.vocab_size,
        "hidden_size": mc.hidden_size,
        "intermediate_size": mc.intermediate_size,
        "num_hidden_layers": mc.num_layers,
        "num_attention_heads": mc.num_heads,
        "num_key_value_heads": mc.num_kv_heads,
        "head_dim": mc.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": mc.rms_norm_eps,
        "rope_theta": mc.rope_theta,
        "rope_scaling": dict(mc.rope_scaling) if scaled else None,
        "max_position_embeddings": mc.max_position_embeddings,
        "tie_word_embeddings": mc.tie_word_embeddings,
        "attention_bias": mc.attention_bias,
        **window,
        "torch_dtype": mc.dtype,
        "bos_token_id": bos_id,
        "eos_token_id": _eos_field(mc.eos_token_ids),
    }


def write_random_model_folder(out_dir: str | Path, preset_name: str, seed: int = 0, **config_overrides) -> Path:
    """Write a weightless model folder for preset `preset_name` (e.g. "llama3-8b") to `out_dir` and
    return its path. `config_overrides` replace ModelConfig fields (e.g. num_layers=2) to make a
    smaller model; `seed` draws the tokenizer's merges (the weights come from the engine's seed at
    load time)."""
    from ..engine.model.presets import preset  # imports torch

    mc = dataclasses.replace(preset(preset_name), **config_overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(mc.vocab_size, mc.eos_token_ids, seed)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    (out_dir / "config.json").write_text(json.dumps(hf_config(mc, bos_id), indent=2) + "\n")
    generation = {"bos_token_id": bos_id, "eos_token_id": _eos_field(mc.eos_token_ids)}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_tokenizer(tokenizer, out_dir)  # its eos token is the lowest eos id's
    if ModelConfig.from_dir(out_dir) != mc:
        raise ValueError(f"{config_overrides} make a model that config.json cannot describe")
    return out_dir
