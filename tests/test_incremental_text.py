"""The frontend's streamed text against decoding every token at once (transformers' tokenizer)."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from preble.worker.text import IncrementalText


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models("llama"))


def stream(tokenizer, ids: list[int], steps: list[int], stop: list[str]) -> tuple[list[str], str]:
    """Feed `ids` in groups of `steps` sizes; the pieces and their concatenation."""
    text = IncrementalText(tokenizer, stop, skip_special_tokens=True)
    pieces, at = [], 0
    for n in steps:
        chunk, at = ids[at:at + n], at + n
        pieces.append(text.add(chunk, finished=at >= len(ids)))
    return pieces, "".join(pieces)


def groups(rng: random.Random, total: int) -> list[int]:
    sizes = []
    while sum(sizes) < total:
        sizes.append(rng.choice([1, 1, 1, 2, 5]))
    return sizes


def test_streamed_text_equals_decoding_all_tokens_at_once(tokenizer):
    rng = random.Random(0)
    samples = ["plain words and spaces", "accents: café, naïve, Zürich", "emoji 🙂 and CJK 漢字 mixed",
               "code: def f(x): return x + 1\n\tindented"]
    for sample in samples:
        ids = tokenizer.encode(sample, add_special_tokens=False)
        for _ in range(5):
            _, joined = stream(tokenizer, ids, groups(rng, len(ids)), [])
            assert joined == tokenizer.decode(ids, skip_special_tokens=True) == sample
    for _ in range(30):  # random ids: split characters, bytes that never complete one
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 40))]
        _, joined = stream(tokenizer, ids, groups(rng, len(ids)), [])
        assert joined == tokenizer.decode(ids, skip_special_tokens=True)


def test_no_piece_ends_in_half_a_character_until_the_end(tokenizer):
    ids = tokenizer.encode("🙂🙂🙂 漢字", add_special_tokens=False)
    pieces, joined = stream(tokenizer, ids, [1] * len(ids), [])
    assert joined == "🙂🙂🙂 漢字"
    assert all("\ufffd" not in p for p in pieces)


def test_text_stops_before_a_stop_string_and_holds_back_its_start(tokenizer):
    ids = tokenizer.encode("the answer is 42. END of it", add_special_tokens=False)
    pieces, joined = stream(tokenizer, ids, [1] * len(ids), ["END"])
    assert joined == "the answer is 42. "
    # While "E" or "EN" could begin the stop string, no piece shows them.
    assert all("E" not in p for p in pieces)
    held = IncrementalText(tokenizer, ["zzz"], skip_special_tokens=True)
    assert held.add(tokenizer.encode("abc z", add_special_tokens=False), finished=False) == "abc "
    assert held.add(tokenizer.encode("q", add_special_tokens=False), finished=True) == "zq"
