"""Piecewise graphs' plumbing on CPU (pieces eager, as before `capture`): a step run through the
pieces gives the logits and pool contents of the model's own forward pass, and an engine whose
prompt steps run through them gives the same tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from preble import LLM, SamplingParams
from preble.engine.batch import ForwardBatch
from preble.engine.piecewise_graphs import PiecewiseGraphConfig, PiecewiseGraphs

from .test_engine_vs_hf import random_prompts

SIZES = PiecewiseGraphConfig(token_sizes=(8, 16, 32, 64))


def attach(llm: LLM) -> PiecewiseGraphs:
    """Give the engine's runner uncaptured pieces (its spare page takes the padding)."""
    engine = llm.engine
    runner = engine.runner
    pieces = PiecewiseGraphs(runner.model, runner.backend, SIZES, max_tokens=64,
                             spare_slot=engine.allocator.num_pages * engine.config.page_size)
    runner.piecewise = pieces
    return pieces


def layout(page_size: int, seqs: list[tuple[int, int]], tables: list[list[int]]):
    """Positions and pool slots of sequences given as (start, new tokens) on their page tables."""
    positions = [np.arange(start, start + n) for start, n in seqs]
    slots = [np.asarray(t)[p // page_size] * page_size + p % page_size for p, t in zip(positions, tables)]
    return np.concatenate(positions), np.concatenate(slots)


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3"])
@pytest.mark.parametrize("seqs", [[(0, 13)],  # one fresh prompt, padded 13 -> 16
                                  [(0, 16)],  # a size exactly
                                  [(9, 20), (0, 5), (30, 1), (17, 1)]])  # chunks on cached prefixes, decodes
def test_pieces_give_the_forward_pass_logits_and_pool(tiny_models, family, seqs):
    ps = 4
    llm = LLM(tiny_models(family), page_size=ps, num_pages=64)
    pieces = attach(llm)
    runner = llm.engine.runner
    pool = runner.backend.pool
    first_pages = np.cumsum([1] + [-(-(s + n) // ps) for s, n in seqs])
    tables = [list(range(a, b)) for a, b in zip(first_pages[:-1], first_pages[1:])]
    starts, lens = [s for s, _ in seqs], [n for _, n in seqs]
    positions, slots = layout(ps, seqs, tables)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 200, (len(positions),), generator=gen).numpy()
    rows = torch.tensor(np.cumsum(lens) - 1)

    def forward(seqs_now, ids_now, rows_now):
        pos, sl = layout(ps, seqs_now, tables)
        batch = ForwardBatch(torch.from_numpy(ids_now), torch.from_numpy(pos), torch.from_numpy(sl),
                             [s for s, _ in seqs_now], [n for _, n in seqs_now], tables, rows_now, ps)
        return runner.model(batch, runner.backend)

    with torch.inference_mode():
        prefix = [(0, s) for s in starts]  # the cached prefixes first (an empty one adds nothing)
        forward(prefix, torch.randint(3, 200, (sum(starts),), generator=gen).numpy(), rows[:0])
        before = [t.clone() for t in pool.k + pool.v]
        expected = forward(seqs, ids, rows)
        expected_pool = [t.clone() for t in pool.k + pool.v]
        for t, b in zip(pool.k + pool.v, before):
            t.copy_(b)
        size = pieces.stage(ids, positions, slots)
        got = pieces.run(size, starts, lens, tables, rows, ps)
    assert size == min(s for s in SIZES.token_sizes if s >= len(ids))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    keep = torch.ones(len(pool.k[0]), dtype=torch.bool)
    keep[pieces.spare_slot:pieces.spare_slot + ps] = False  # the padding's K/V lands there
    for t, e in zip(pool.k + pool.v, expected_pool):
        torch.testing.assert_close(t[keep], e[keep], rtol=1e-5, atol=1e-5)
    assert size == len(ids) or not torch.equal(pool.k[0][~keep], before[0][~keep])


@pytest.mark.parametrize("overlap", [False, True])
def test_engine_through_pieces_gives_the_eager_engine_tokens(tiny_models, overlap):
    """Chunked prompts, cached prefixes, preemption under a small pool, stop tokens and seeded
    sampling: every step of up to 64 tokens runs through the pieces, and nothing changes."""
    prompts = random_prompts(10, (3, 40), seed=31, shared=random_prompts(1, (12, 12), seed=32)[0])
    params = [SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True),
              SamplingParams(max_tokens=9, temperature=0.9, top_k=20, seed=5, ignore_eos=True)] * 5
    options = dict(page_size=4, num_pages=40, kv_watermark=0.0, max_num_batched_tokens=48, overlap=overlap)
    results = []
    for with_pieces in (False, True):
        llm = LLM(tiny_models("qwen3"), **options)
        if with_pieces:
            calls = count_runs(attach(llm))
        outs = llm.generate(prompts, params)
        assert llm.engine.scheduler.num_preemptions > 0
        results.append([o.outputs[0].token_ids for o in outs])
    assert calls["runs"] > 10 and calls["sizes"] > 2
    assert results[1] == results[0]


def count_runs(pieces: PiecewiseGraphs) -> dict[str, int]:
    """How many steps ran through `pieces`, and at how many sizes."""
    calls, sizes, run = {"runs": 0}, set(), pieces.run

    def counted(size, *args):
        calls["runs"] += 1
        sizes.add(size)
        calls["sizes"] = len(sizes)
        return run(size, *args)

    pieces.run = counted
    return calls
