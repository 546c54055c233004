"""The engine on CUDA (Triton attention, CUDA graphs) gives the CPU engine's greedy outputs."""

from __future__ import annotations

import random

import pytest

from preble import LLM, SamplingParams

pytestmark = pytest.mark.gpu

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
SHAPE = dict(head_dim=64, num_attention_heads=4, num_key_value_heads=2)  # Triton kernels take D in {64, 128}


def prompts(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(3, 400) for _ in range(70)]
    tails = [[rng.randrange(3, 400) for _ in range(rng.randint(1, 30))] for _ in range(6)]
    return [shared + t for t in tails] + [[rng.randrange(3, 400) for _ in range(rng.randint(1, 90))]
                                          for _ in range(4)]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from preble.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("gpu-models")
    return {f: str(write_tiny_model(root / f, f, **SHAPE)) for f in ("llama3", "qwen2", "qwen3")}


def outputs(llm: LLM, batch: list[list[int]]) -> list[list[int]]:
    first = llm.generate(batch[:1], GREEDY)  # warm the cache so later prompts hit it
    rest = llm.generate(batch[1:], GREEDY)
    return [o.outputs[0].token_ids for o in first + rest]


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_cuda_engine_matches_cpu_engine(model_dirs, family, page_size):
    batch = prompts(seed=page_size)
    cpu = outputs(LLM(model_dirs[family], device="cpu", page_size=page_size), batch)
    gpu_llm = LLM(model_dirs[family], device="cuda", dtype="float32", page_size=page_size, kv_cache_gib=1)
    assert type(gpu_llm.engine.runner.backend).__name__ == "TritonBackend"
    assert gpu_llm.engine.runner.graphs is not None
    assert outputs(gpu_llm, batch) == cpu


def test_cuda_graphs_do_not_change_outputs_under_kv_pressure(model_dirs):
    batch = prompts(seed=3)
    opts = dict(device="cuda", dtype="float32", page_size=4, num_pages=60, kv_watermark=0.0)
    eager = LLM(model_dirs["llama3"], cuda_graph=False, **opts)
    graphed = LLM(model_dirs["llama3"], **opts)
    assert outputs(graphed, batch) == outputs(eager, batch)
    assert graphed.engine.scheduler.num_preemptions > 0


def test_bf16_engine_runs_and_mostly_agrees_with_fp32(model_dirs):
    batch = prompts(seed=4)
    fp32 = outputs(LLM(model_dirs["qwen3"], device="cuda", dtype="float32", kv_cache_gib=1), batch)
    bf16 = outputs(LLM(model_dirs["qwen3"], device="cuda", dtype="bfloat16", kv_cache_gib=1), batch)
    first_tokens_equal = sum(a[0] == b[0] for a, b in zip(fp32, bf16))
    assert first_tokens_equal >= len(batch) - 2
