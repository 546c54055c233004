"""Byte-level BPE tokenizers written as Hugging Face tokenizer files, for the model folders this
package makes (tiny test models, weightless random models): one pipeline and one way to save, so
`AutoTokenizer` under transformers 4 and 5 and a plain `tokenizers.Tokenizer` agree on them."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
# Qwen2-style pre-tokenization (GPT-2 byte level, digits split one by one). transformers 5 ignores the saved
# tokenizer class for qwen2 folders and rebuilds normalizer/pre-tokenizer as Qwen2Tokenizer's; using the same
# pipeline everywhere keeps AutoTokenizer and a plain `tokenizers.Tokenizer` on tokenizer.json in agreement.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def byte_level(tokenizer: Tokenizer) -> Tokenizer:
    """Give `tokenizer` the shared normalizer, pre-tokenizer and decoder; returns it."""
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def prepend_bos(tokenizer: Tokenizer, bos_token: str = BOS_TOKEN) -> None:
    """Prepend BOS like Llama tokenizers do; chat templates render it themselves and are tokenized without it."""
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos_token} $A",
        pair=f"{bos_token} $A {bos_token} $B",
        special_tokens=[(bos_token, tokenizer.token_to_id(bos_token))],
    )


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | Path, bos_token: str = BOS_TOKEN,
                   eos_token: str = EOS_TOKEN, pad_token: str = PAD_TOKEN):
    """Write `tokenizer` to `out_dir` as a PreTrainedTokenizerFast with CHAT_TEMPLATE and return that."""
    from transformers import PreTrainedTokenizerFast  # slow to import; only writers of model folders need it

    out_dir = Path(out_dir)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos_token, eos_token=eos_token,
                                   pad_token=pad_token, chat_template=CHAT_TEMPLATE)
    # Keep the chat template inside tokenizer_config.json (transformers 5 defaults to a chat_template.jinja file).
    fast.save_pretrained(out_dir, save_jinja_files=False)
    # transformers 5 records its internal class name "TokenizersBackend"; the public name loads in 4.x too.
    # An explicit null unk_token stops Qwen2Tokenizer (forced for qwen2 folders) adding "<|endoftext|>" as
    # an extra token beyond the model's vocabulary.
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config["unk_token"] = None
    config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return fast
