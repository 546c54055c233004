"""Random-weight presets have the published architectures' sizes and run end to end."""

from __future__ import annotations

import pytest
import torch

from preble import LLM, SamplingParams
from preble.engine.model.llama import LlamaForCausalLM
from preble.engine.model.presets import PRESETS, preset
from preble.models.config import UnsupportedModel

# Parameter counts of the published checkpoints (tied embeddings counted once).
PUBLISHED_PARAMS = {"llama3-8b": 8.03e9, "llama3-70b": 70.6e9, "mistral-7b": 7.25e9,
                    "qwen2.5-0.5b": 0.494e9, "qwen2.5-7b": 7.62e9, "qwen3-8b": 8.19e9}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_published_parameter_count(name):
    with torch.device("meta"):
        model = LlamaForCausalLM(PRESETS[name])
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(UnsupportedModel, match="unknown model preset"):
        preset("random:gpt-5")


def test_random_model_generates_from_token_ids_and_refuses_text():
    llm = LLM("random:qwen2.5-0.5b", num_pages=16, max_model_len=64)
    out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 3 and out.outputs[0].text == ""
    with pytest.raises(ValueError, match="no tokenizer"):
        llm.generate("hello")
