"""Steps launched before the last one's tokens are read (`overlap`) give what steps in turn give."""

from __future__ import annotations

import random

import pytest

from preble import LLM, SamplingParams

from .test_engine_vs_hf import random_prompts


def params_mix(stop_token: int) -> list[SamplingParams]:
    """Greedy to a length, greedy to a stop token, seeded sampling with top-k / top-p."""
    return [SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
            SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[stop_token]),
            SamplingParams(max_tokens=9, temperature=0.9, top_k=20, seed=5, ignore_eos=True),
            SamplingParams(max_tokens=16, temperature=0.7, top_p=0.8, seed=11, stop_token_ids=[stop_token]),
            SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)]


def generate(path: str, overlap: bool, prompts, params, preempts: bool = False, **options):
    llm = LLM(path, page_size=4, overlap=overlap, **options)
    outs = llm.generate(prompts, params)
    engine = llm.engine
    assert (engine.scheduler.num_preemptions > 0) == preempts
    assert not engine.has_work and engine.cache.locked_pages == 0
    assert engine.allocator.num_free + engine.cache.evictable_pages == engine.allocator.num_pages
    return [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("options", [dict(num_pages=256),
                                     dict(num_pages=28, max_num_batched_tokens=24, preempts=True),  # and chunks
                                     ])
def test_overlapped_steps_give_the_tokens_of_steps_in_turn(tiny_models, family, options):
    path = tiny_models(family)
    prompts = random_prompts(10, (3, 30), seed=21, shared=random_prompts(1, (9, 9), seed=22)[0])
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    alone = {k: v for k, v in options.items() if k != "preempts"}
    stop_token = generate(path, False, prompts[1:2], greedy, **alone)[0][0][3]  # ends prompts[1]
    params = [p for _ in range(2) for p in params_mix(stop_token)]
    in_turn = generate(path, False, prompts, params, **options)
    assert {reason for _, reason in in_turn} == {"stop", "length"}
    assert generate(path, True, prompts, params, **options) == in_turn


def test_requests_added_and_aborted_between_overlapped_steps(tiny_models):
    """A server's loop: requests arrive and are aborted while a step is in flight; the others
    still get the tokens they get alone, and no page stays taken."""
    path = tiny_models("llama")
    prompts = random_prompts(8, (3, 25), seed=23)
    greedy = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    alone = generate(path, False, prompts, greedy, num_pages=512)
    llm = LLM(path, page_size=4, num_pages=64, max_num_batched_tokens=32)
    engine, rng = llm.engine, random.Random(3)
    reqs, served = [], []
    for step in range(500):
        if len(reqs) < len(prompts) and rng.random() < 0.5:
            reqs.append(engine.add_request(prompts[len(reqs)], greedy))
        if step % 5 == 4 and reqs and not reqs[-1].is_finished:
            engine.abort(reqs[-1].request_id)
        served += engine.step()
        if len(reqs) == len(prompts) and not engine.has_work:
            break
    assert all(r.is_finished for r in reqs)
    assert any(r.finish_reason == "abort" for r in reqs)
    assert all(r.finish_reason in ("abort", "length") for r in reqs)
    for req, (tokens, _) in zip(reqs, alone):
        if req.finish_reason == "length":
            assert req.output_token_ids == tokens
        else:
            assert req.output_token_ids == tokens[:len(req.output_token_ids)]
    assert sum(r.request_id == req.request_id for r in served for req in reqs[:1]) == len(reqs[0].output_token_ids)
    assert engine.cache.locked_pages == 0
    assert engine.allocator.num_free + engine.cache.evictable_pages == engine.allocator.num_pages
