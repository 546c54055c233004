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


def test_fused_ops_match_torch_ops():
    import torch

    from preble.engine.model import fused_ops
    from preble.engine.model.llama import apply_rope

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(37, 4096, device="cuda", dtype=dtype)
        r = torch.randn_like(x)
        w = 1 + 0.1 * torch.randn(4096, device="cuda", dtype=dtype)
        normed, summed = fused_ops.rms_norm(x, w, 1e-5, r)
        ref_sum = x + r
        ref = w * (ref_sum.float() * torch.rsqrt(ref_sum.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
        assert torch.equal(summed, ref_sum)
        assert (normed.float() - ref.float()).norm() / ref.float().norm() < (1e-6 if dtype == torch.float32 else 1e-2)

        qkv = torch.randn(37, (32 + 16) * 128, device="cuda", dtype=dtype)
        q, k, _ = qkv.split([32 * 128, 8 * 128, 8 * 128], dim=-1)
        q, k = q.view(37, 32, 128), k.view(37, 8, 128)
        angles = torch.arange(37, device="cuda").float()[:, None] * 7.3 / (1 + torch.arange(64, device="cuda"))
        cos, sin = angles.cos(), angles.sin()
        q_ref, k_ref = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        fused_ops.apply_rope_(q, k, cos, sin)
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        assert (q.float() - q_ref.float()).norm() / q_ref.float().norm() < tol
        assert (k.float() - k_ref.float()).norm() / k_ref.float().norm() < tol

        gate_up = torch.randn(37, 2 * 1000, device="cuda", dtype=dtype)
        gate, up = gate_up.split(1000, dim=-1)
        ref = torch.nn.functional.silu(gate) * up
        got = fused_ops.silu_mul(gate_up)
        assert (got.float() - ref.float()).norm() / ref.float().norm() < tol


def test_overlapped_steps_give_the_tokens_of_steps_in_turn_on_cuda(model_dirs):
    """Launching each step before reading the last one's tokens (CUDA graphs and eager mixed
    steps, greedy stops and seeded sampling, under KV pressure) changes no output."""
    batch = prompts(seed=5)
    opts = dict(device="cuda", dtype="float32", page_size=4, num_pages=80, kv_watermark=0.0,
                max_num_batched_tokens=64)
    first = LLM(model_dirs["qwen3"], overlap=False, **opts).generate(batch[:1], GREEDY)[0]
    stop = first.outputs[0].token_ids[4]
    params = [SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[stop]),
              SamplingParams(max_tokens=10, temperature=0.8, top_k=30, seed=7, ignore_eos=True),
              SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True)] * 4
    params = params[:len(batch)]
    results = {}
    for overlap in (False, True):
        llm = LLM(model_dirs["qwen3"], overlap=overlap, **opts)
        outs = llm.generate(batch, params)
        results[overlap] = [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs]
        assert llm.engine.scheduler.num_preemptions > 0
        assert llm.engine.cache.locked_pages == 0
    assert results[True] == results[False]
    assert results[False][0][1] == "stop"


def test_piecewise_graphs_do_not_change_outputs(model_dirs):
    """Steps with prompt tokens replayed in pieces (chunks, cached prefixes, preemption) give the
    eager engine's tokens."""
    from ..test_piecewise_graphs import count_runs

    batch = prompts(seed=6)
    opts = dict(device="cuda", dtype="float32", page_size=4, num_pages=80, kv_watermark=0.0,
                max_num_batched_tokens=64)
    eager = LLM(model_dirs["llama3"], piecewise_graph_max_tokens=0, **opts)
    pieces = LLM(model_dirs["llama3"], piecewise_graph_max_tokens=512, **opts)
    assert eager.engine.runner.piecewise is None
    calls = count_runs(pieces.engine.runner.piecewise)
    assert outputs(pieces, batch) == outputs(eager, batch)
    assert calls["runs"] > 5 and calls["sizes"] > 2
    assert pieces.engine.scheduler.num_preemptions > 0
