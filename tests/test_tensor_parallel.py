"""Tensor parallelism on CPU (gloo): a model split over 2 or 4 ranks gives exactly the greedy
tokens of the one-rank engine and of Hugging Face transformers, through prefix-cache hits,
chunked prefill and preemption."""

from __future__ import annotations

import pytest

from preble import LLM, SamplingParams
from preble.engine.parallel import TensorParallel, check_divisible, local_config
from preble.models.config import ModelConfig, UnsupportedModel

from .reference import hf_greedy
from .test_engine_vs_hf import random_prompts

PARAMS = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
# A pool too small for the batch (40 pages of 4 tokens) forces eviction and preemption; a
# 16-token step budget splits prompts into chunks.
ENGINE = dict(page_size=4, num_pages=40, kv_watermark=0.0, max_num_batched_tokens=16)


def run(path: str, tp: int):
    """Outputs of a shared prefix alone, then of 8 prompts continuing it; the engine's counters."""
    shared = random_prompts(1, (21, 21), seed=21)[0]
    prompts = random_prompts(8, (3, 20), seed=22, shared=shared)
    with LLM(path, tensor_parallel_size=tp, **ENGINE) as llm:
        first = llm.generate([shared], PARAMS)
        outs = llm.generate(prompts, PARAMS)
        return [shared, *prompts], first + outs, llm.engine.scheduler.num_preemptions


@pytest.mark.parametrize("family,tp", [("llama", 2), ("llama3", 2), ("mistral", 2), ("qwen2", 2), ("qwen3", 2),
                                       ("llama", 4), ("qwen2", 4)])
def test_split_model_matches_one_rank_and_hf(tiny_models, family, tp):
    path = tiny_models(family)
    prompts, outs, preemptions = run(path, tp)
    _, ref_outs, ref_preemptions = run(path, 1)
    assert preemptions > 0 and preemptions == ref_preemptions
    assert any(o.num_cached_tokens >= 20 for o in outs[1:])  # the shared prefix was hit
    for prompt, out, ref in zip(prompts, outs, ref_outs):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        assert out.num_cached_tokens == ref.num_cached_tokens
        assert out.outputs[0].token_ids == hf_greedy(path, prompt, PARAMS.max_tokens)


def test_tied_embeddings_split_by_vocabulary(tiny_models):
    """The embedding and LM head share one vocabulary-split matrix; the last rank's rows are padded."""
    path = tiny_models("qwen2", tied=True)
    prompts = random_prompts(3, (5, 30), seed=23)
    with LLM(path, page_size=4, tensor_parallel_size=4) as llm:
        outs = llm.generate(prompts, PARAMS)
        head = llm.engine.model.lm_head
        assert head.weight is llm.engine.model.model.embed_tokens.weight
        assert head.weight.shape[0] == -(-head.vocab_size // 4)
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(path, prompt, PARAMS.max_tokens)


def shape(heads: int, kv_heads: int, mlp: int = 128) -> ModelConfig:
    return ModelConfig("LlamaForCausalLM", vocab_size=100, hidden_size=64, intermediate_size=mlp, num_layers=1,
                       num_heads=heads, num_kv_heads=kv_heads, head_dim=16, rms_norm_eps=1e-6, rope_theta=1e4,
                       max_position_embeddings=64)


def test_kv_heads_are_split_or_shared():
    """Each rank's query heads use exactly the KV heads it holds (brute force over GQA's mapping)."""
    for heads, kv, size in [(8, 8, 4), (8, 2, 2), (8, 2, 4), (8, 1, 4), (16, 4, 8)]:
        for rank in range(size):
            tp = TensorParallel(rank, size)
            first, end = tp.kv_heads(kv)
            q_first, q_end = tp.split(heads)
            needed = {h // (heads // kv) for h in range(q_first, q_end)}
            assert needed == set(range(first, end)), (heads, kv, size, rank)
            assert local_config(shape(heads, kv), tp).num_kv_heads == end - first


def test_models_that_do_not_split_are_refused():
    with pytest.raises(UnsupportedModel, match="attention heads 6"):
        check_divisible(shape(6, 6), 4)
    with pytest.raises(UnsupportedModel, match="KV heads 3"):
        check_divisible(shape(12, 3), 4)
    with pytest.raises(UnsupportedModel, match="MLP width 100"):
        check_divisible(shape(8, 8, mlp=100), 8)
    assert TensorParallel(3, 4).vocab_rows(10) == (9, 12)  # rows 10 and 11 are padding


@pytest.mark.slow  # a command end to end; `make test-all` runs it
def test_serve_with_tensor_parallel_workers(tiny_models):
    """`preble serve --tp 2`: each worker's engine runs two ranks; answers equal HF's greedy ones."""
    import httpx
    import psutil
    from transformers import AutoTokenizer

    from preble.bench.local_cluster import LocalCluster

    path = tiny_models("llama")
    prompts = random_prompts(2, (10, 20), seed=24)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with LocalCluster(path, workers=2, serve_args=["--tp", "2"]) as cluster:
        ranks = [p for p in psutil.Process(cluster.proc.pid).children(recursive=True)
                 if "preble.engine.tp_ranks" in p.cmdline()]
        assert len(ranks) == 2  # one extra rank per worker
        for prompt in prompts:
            body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
            out = httpx.post(f"{cluster.url}/v1/completions", json=body, timeout=60).json()
            assert out["usage"]["completion_tokens"] == 8
            expected = tokenizer.decode(hf_greedy(path, prompt, 8))
            assert out["choices"][0]["text"] == expected
