"""The offline API: text prompts, stop conditions, seeds and input validation."""

from __future__ import annotations

import pytest

from preble import LLM, SamplingParams
from preble.core.sampling_params import InvalidSamplingParams
from preble.core.scheduler import RequestTooLong
from preble.engine.engine import InvalidPrompt

from .reference import hf_greedy


@pytest.fixture(scope="module")
def llm(tiny_models):
    return LLM(tiny_models("llama"), page_size=4)


@pytest.fixture(scope="module")
def path(tiny_models):
    return tiny_models("llama")


def test_text_prompt_is_tokenised_and_decoded(llm, path):
    out = llm.generate("the cat sat on the mat", SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    ids = llm.tokenizer.encode("the cat sat on the mat")
    assert out.prompt == "the cat sat on the mat" and out.prompt_token_ids == ids
    assert out.outputs[0].token_ids == hf_greedy(path, ids, 6)
    assert out.outputs[0].text == llm.tokenizer.decode(out.outputs[0].token_ids, skip_special_tokens=True)
    assert out.outputs[0].finish_reason == "length"


def test_stop_token_ids_end_generation_on_that_token(llm, path):
    prompt = [5, 17, 99, 3, 42]
    ref = hf_greedy(path, prompt, 8)
    stop_at = ref[3]
    first = ref.index(stop_at)
    out = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0, stop_token_ids=[stop_at]))[0]
    assert out.outputs[0].token_ids == ref[: first + 1]
    assert out.outputs[0].finish_reason == "stop"


def test_eos_stops_unless_ignored(llm, path):
    prompt = [5, 17, 99, 3, 42]
    ref = hf_greedy(path, prompt, 8)
    # Random weights rarely emit the real EOS, so declare the reference's third token the EOS.
    engine = llm.engine
    saved = engine.eos_token_ids
    engine.eos_token_ids = frozenset({ref[2]})
    try:
        stopped = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0))[0]
        ignored = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    finally:
        engine.eos_token_ids = saved
    assert stopped.outputs[0].token_ids == ref[: ref.index(ref[2]) + 1]
    assert stopped.outputs[0].finish_reason == "stop"
    assert ignored.outputs[0].token_ids == ref
    assert ignored.outputs[0].finish_reason == "length"


def test_stop_strings_cut_the_text_and_end_generation(llm):
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    full = llm.generate("once upon a time", params)[0].outputs[0]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    assert stop.strip(), "need a visible stop string"
    cut = llm.generate("once upon a time", SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                          stop=[stop]))[0].outputs[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert len(cut.token_ids) < len(full.token_ids)
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]


def test_seeded_sampling_is_reproducible(llm):
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    a = llm.generate([[5, 6, 7]], params)[0].outputs[0].token_ids
    b = llm.generate([[5, 6, 7], [9, 9, 9, 9]], [params, SamplingParams(max_tokens=3)])[0].outputs[0].token_ids
    assert a == b


def test_bad_input_raises_typed_errors_and_leaves_the_engine_clean(llm):
    vocab = llm.engine.model_config.vocab_size
    with pytest.raises(InvalidPrompt):
        llm.generate([[1, 2, vocab]])
    with pytest.raises(InvalidPrompt):
        llm.generate([[1, -2, 3]])
    with pytest.raises(InvalidPrompt):
        llm.generate([[]])
    for not_ids in ([1, 2.5], [1, "2"], [[1, 2]], [1, [2, 3]], [1, 2**70]):
        with pytest.raises(InvalidPrompt):
            llm.engine.add_request(not_ids, SamplingParams())
    with pytest.raises(RequestTooLong):
        llm.generate([[5] * (llm.engine.scheduler.max_model_len + 1)])
    with pytest.raises(InvalidSamplingParams):
        llm.generate([[1, 2]], SamplingParams(max_tokens=0))
    with pytest.raises(ValueError, match="sampling params"):
        llm.generate([[1, 2], [3, 4]], [SamplingParams()])
    assert not llm.engine.has_work
    assert llm.generate([[5, 6]], SamplingParams(max_tokens=2, ignore_eos=True))[0].outputs[0].finish_reason == "length"


def test_unknown_engine_option_is_refused(path):
    with pytest.raises(TypeError, match="unknown engine options"):
        LLM(path, page_sise=4)
