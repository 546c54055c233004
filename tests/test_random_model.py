"""Weightless model folders (`preble random-model`) and `load_format="dummy"`: the folder describes
a preset's architecture to Hugging Face and to the engine, its tokenizer fills the vocabulary, and
an engine over it draws the weights `random:NAME` gets and generates what they give."""

from __future__ import annotations

import dataclasses
import random
import shutil
import time

import httpx
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from transformers import AutoConfig, AutoTokenizer
from typer.testing import CliRunner

from preble import LLM, SamplingParams
from preble.bench.local_cluster import LocalCluster
from preble.cli import app
from preble.engine.config import EngineConfig
from preble.engine.engine import LLMEngine
from preble.engine.model.presets import PRESETS
from preble.models.config import ModelConfig, UnsupportedModel
from preble.models.random_folder import special_tokens, write_random_model_folder

from .reference import hf_greedy

TINY = dict(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PRESET_NAMES = ["llama3-8b", "qwen3-8b"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """preset -> a tiny weightless folder of it."""
    root = tmp_path_factory.mktemp("random-models")
    return {name: write_random_model_folder(root / name, name, **TINY) for name in PRESET_NAMES}


def tiny_preset(name: str) -> ModelConfig:
    return dataclasses.replace(PRESETS[name], **TINY)


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(256, 100_000) for _ in range(rng.randint(3, 40))] for _ in range(n)]


def hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The engine model's weights under Hugging Face's names (q/k/v and gate/up split apart)."""
    cfg = model.config
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    out = {}
    for name, tensor in model.state_dict().items():
        if ".qkv_proj." in name:
            out.update(zip((name.replace("qkv", p) for p in "qkv"), tensor.split([q, kv, kv])))
        elif ".gate_up_proj." in name:
            out.update(zip((name.replace("gate_up", p) for p in ("gate", "up")), tensor.chunk(2)))
        else:
            out[name] = tensor
    return {name: t.contiguous() for name, t in out.items()}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_config_reads_back_as_the_preset_and_loads_in_transformers(folders, name):
    assert ModelConfig.from_dir(folders[name]) == tiny_preset(name)
    hf = AutoConfig.from_pretrained(folders[name])
    assert (hf.architectures, hf.num_hidden_layers, hf.vocab_size) == ([PRESETS[name].architecture], 2,
                                                                       PRESETS[name].vocab_size)


def test_full_size_llama3_folder_is_written_in_seconds_without_weights(tmp_path):
    start = time.monotonic()
    folder = write_random_model_folder(tmp_path / "llama3-8b", "llama3-8b")
    assert time.monotonic() - start < 10
    assert ModelConfig.from_dir(folder) == PRESETS["llama3-8b"]
    assert not list(folder.glob("*.safetensors"))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_tokenizer_fills_the_vocabulary_with_specials_at_the_presets_ids(folders, name):
    tok = AutoTokenizer.from_pretrained(folders[name])
    mc = PRESETS[name]
    assert len(tok) == mc.vocab_size
    assert tok.bos_token_id == min(mc.eos_token_ids) - 1
    assert tok.eos_token_id == min(mc.eos_token_ids)
    specials = [tok.bos_token_id, tok.pad_token_id, *mc.eos_token_ids]
    assert len(set(specials)) == len(specials) and tok.decode(specials, skip_special_tokens=True) == ""
    assert set(tok.convert_ids_to_tokens(list(range(256)))) == set(pre_tokenizers.ByteLevel.alphabet())
    assert tok.decode([ord("a")]) == "a"

    rng = random.Random(0)
    text = tok.decode([rng.randrange(mc.vocab_size) for _ in range(500)], skip_special_tokens=True)
    assert isinstance(text, str) and len(text) > 500
    lengths = [len(tok.decode([rng.randrange(256, min(mc.eos_token_ids) - 1)])) for _ in range(1000)]
    assert 3 <= sum(lengths) / len(lengths) <= 8  # like a trained vocabulary's tokens, not single bytes

    sentence = "The quick brown fox, 42 times: naïve café ✓\nand again."
    ids = tok.encode(sentence)
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == sentence


def test_special_tokens_sit_where_the_eos_ids_say():
    llama3 = special_tokens(128256, (128001, 128009))
    assert set(llama3) == set(range(128000, 128256))
    assert [llama3[i] for i in (128000, 128001, 128009)] == ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    assert special_tokens(32768, (2,)) == {0: "<|pad|>", 1: "<|begin_of_text|>", 2: "<|end_of_text|>"}


def test_dummy_weights_are_the_random_preset_weights(monkeypatch, tmp_path):
    monkeypatch.setitem(PRESETS, "tiny-llama3", tiny_preset("llama3-8b"))
    folder = write_random_model_folder(tmp_path / "tiny", "tiny-llama3")

    def weights(model: str, **options) -> dict[str, torch.Tensor]:
        return LLMEngine(EngineConfig(model=model, num_pages=8, **options)).model.state_dict()

    preset = weights("random:tiny-llama3")
    dummy = weights(str(folder), load_format="dummy")
    assert preset.keys() == dummy.keys()
    assert all(torch.equal(preset[k], dummy[k]) for k in preset)
    reseeded = weights(str(folder), load_format="dummy", seed=1)
    assert not torch.equal(reseeded["model.embed_tokens.weight"], dummy["model.embed_tokens.weight"])


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_dummy_engine_generates_what_its_weights_give_when_saved(folders, name, tmp_path):
    """Save the dummy engine's weights into a copy of the folder: the engine loading them, and
    transformers, generate the same greedy tokens."""
    batch = prompts(4, seed=1)
    dummy = LLM(str(folders[name]), load_format="dummy", num_pages=64)
    tokens = [o.outputs[0].token_ids for o in dummy.generate(batch, GREEDY)]
    saved = shutil.copytree(folders[name], tmp_path / "saved")
    save_file(hf_state_dict(dummy.engine.model), saved / "model.safetensors")
    loaded = LLM(str(saved), num_pages=64)
    assert [o.outputs[0].token_ids for o in loaded.generate(batch, GREEDY)] == tokens
    assert [hf_greedy(str(saved), p, GREEDY.max_tokens) for p in batch] == tokens


def test_auto_on_a_weightless_folder_says_to_pass_dummy(folders):
    with pytest.raises(UnsupportedModel, match=r"no \*\.safetensors in .*; pass --load-format dummy"):
        LLMEngine(EngineConfig(model=str(folders["llama3-8b"]), num_pages=8))


def test_unknown_load_format_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="auto.*dummy.*'pt'"):
        EngineConfig(model="random:llama3-8b", load_format="pt")
    result = CliRunner().invoke(app, ["worker", "--model", "m", "--load-format", "pt"])
    assert result.exit_code == 2 and "auto, dummy" in result.output


def test_random_model_command_writes_a_folder_and_says_how_to_serve_it(tmp_path):
    result = CliRunner().invoke(app, ["random-model", "--preset", "mistral-7b", "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "m") in result.output and "--load-format dummy" in result.output
    assert ModelConfig.from_dir(tmp_path / "m") == PRESETS["mistral-7b"]


def test_serve_passes_load_format_to_its_workers(folders):
    """`preble serve --model DIR --load-format dummy` serves the weights an in-process engine draws."""
    folder = str(folders["llama3-8b"])
    prompt = prompts(1, seed=2)[0]
    expected = LLM(folder, load_format="dummy", num_pages=64).generate([prompt], GREEDY)[0].outputs[0].text
    with LocalCluster(folder, workers=1, worker_args=["--load-format", "dummy", "--num-pages", "64"],
                      startup_timeout_s=120) as cluster:
        resp = httpx.post(f"{cluster.url}/v1/completions", timeout=60, json={
            "prompt": prompt, "max_tokens": GREEDY.max_tokens, "temperature": 0, "ignore_eos": True})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == expected
