"""The engine's greedy outputs equal Hugging Face transformers' token for token (fp32, CPU)."""

from __future__ import annotations

import random

import pytest
import torch

from preble import LLM, SamplingParams
from preble.models.tiny import FAMILIES

from .reference import hf_greedy, hf_logits

GREEDY = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)


def random_prompts(n: int, lengths: tuple[int, int], seed: int, vocab: int = 400,
                   shared: list[int] | None = None) -> list[list[int]]:
    rng = random.Random(seed)
    head = shared or []
    return [head + [rng.randrange(3, vocab) for _ in range(rng.randint(*lengths))] for _ in range(n)]


def assert_matches_hf(path: str, prompts: list[list[int]], outputs, max_tokens: int) -> None:
    for prompt, out in zip(prompts, outputs):
        assert out.prompt_token_ids == prompt
        assert out.outputs[0].token_ids == hf_greedy(path, prompt, max_tokens), f"prompt {prompt}"


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batch_matches_hf(tiny_models, family):
    path = tiny_models(family)
    prompts = random_prompts(5, (1, 40), seed=1)
    outs = LLM(path, page_size=4, num_pages=256).generate(prompts, GREEDY)
    assert_matches_hf(path, prompts, outs, GREEDY.max_tokens)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tied_embeddings_match_hf(tiny_models, family):
    path = tiny_models(family, tied=True)
    prompts = random_prompts(3, (5, 30), seed=2)
    outs = LLM(path, page_size=4).generate(prompts, GREEDY)
    assert_matches_hf(path, prompts, outs, GREEDY.max_tokens)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_prefix_cache_hits_match_hf(tiny_models, family, page_size):
    """Later prompts reuse a cached prefix (possibly split mid-edge) and still match HF."""
    path = tiny_models(family)
    shared = random_prompts(1, (37, 37), seed=3)[0]
    llm = LLM(path, page_size=page_size, num_pages=2048 // page_size)
    first = llm.generate([shared + [7, 8, 9]], GREEDY)[0]
    assert first.num_cached_tokens == 0
    prompts = random_prompts(4, (1, 12), seed=4, shared=shared) + [shared[:20] + [11, 12, 13]]
    outs = llm.generate(prompts, GREEDY)
    for out in outs[:4]:
        assert out.num_cached_tokens == 37 // page_size * page_size
    assert outs[4].num_cached_tokens == 20 // page_size * page_size
    assert_matches_hf(path, prompts, outs, GREEDY.max_tokens)


@pytest.mark.parametrize("family", ["llama3", "qwen3"])
def test_chunked_prefill_matches_hf(tiny_models, family):
    """Prompts longer than the step budget are prefilled over several steps."""
    path = tiny_models(family)
    prompts = random_prompts(4, (30, 70), seed=5)
    llm = LLM(path, page_size=4, max_num_batched_tokens=16, max_prefill_chunk=7)
    outs = llm.generate(prompts, GREEDY)
    assert_matches_hf(path, prompts, outs, GREEDY.max_tokens)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_kv_pressure_evicts_and_preempts_but_matches_hf(tiny_models, family):
    """A pool too small for the batch forces cache eviction and preemption by recompute."""
    path = tiny_models(family)
    shared = random_prompts(1, (16, 16), seed=6)[0]
    prompts = random_prompts(8, (4, 20), seed=7, shared=shared)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    llm = LLM(path, page_size=4, num_pages=40, kv_watermark=0.0, max_num_batched_tokens=64)
    outs = llm.generate(prompts, params)
    assert llm.engine.scheduler.num_preemptions > 0
    assert_matches_hf(path, prompts, outs, params.max_tokens)
    # Everything is back: pages are either free or held, unlocked, by the cache.
    alloc, cache = llm.engine.allocator, llm.engine.cache
    assert cache.locked_pages == 0
    assert alloc.num_free + cache.evictable_pages == alloc.num_pages


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "preble"])
def test_every_local_policy_matches_hf(tiny_models, policy):
    path = tiny_models("llama")
    shared = random_prompts(1, (24, 24), seed=8)[0]
    prompts = random_prompts(6, (2, 10), seed=9, shared=shared) + random_prompts(4, (5, 30), seed=10)
    llm = LLM(path, page_size=4, local_policy=policy, max_num_batched_tokens=48,
              max_running_requests=3)
    outs = llm.generate(prompts, GREEDY)
    assert_matches_hf(path, prompts, outs, GREEDY.max_tokens)


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.25), ("float16", 0.05)])
def test_half_precision_logits_close_to_fp32_reference(tiny_models, dtype, tol):
    """A half-precision checkpoint loads and its prefill logits track the fp32 reference."""
    path = tiny_models("qwen3", dtype=dtype)
    prompt = random_prompts(1, (40, 40), seed=11)[0]
    llm = LLM(path, dtype=dtype, page_size=4)
    engine = llm.engine
    engine.add_request(prompt, GREEDY)
    step = engine.runner.prepare(engine.scheduler.schedule())
    step.logit_rows = list(range(len(prompt)))
    with torch.inference_mode():
        logits = engine.runner.forward(step)
    ref = hf_logits(path, prompt)
    assert engine.model.lm_head.weight.dtype == getattr(torch, dtype)
    assert (logits - ref).abs().max().item() < tol * ref.abs().max().item()
