"""Workload generators: size, determinism, statistics, trace parsing, popularity."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from preble.bench.workloads import (
    WORKLOADS,
    Workload,
    WorkloadRequest,
    make_workload,
    reusable_prefix_lengths,
    shared_prefix_lengths,
)
from preble.bench.workloads.report import compare_to_paper

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"workload data missing: {DATA}")

PREBLE = ["toolbench", "agent", "programming", "videoqa", "loogle"]
ALL = PREBLE + ["shared_prefix", "mooncake", "azure"]
N = 40


def _make(name, seed=0, n=N, **kw):
    return make_workload(name, num_requests=n, seed=seed, data_dir=DATA, **kw)


def _key(w: Workload):
    return [(r.prompt, r.prompt_token_ids, r.max_tokens, r.arrival, r.group) for r in w.requests]


# --------------------------------------------------------------------------- pure helpers


def test_shared_prefix_lengths_exact():
    seqs = [[1, 2, 3, 4], [1, 2, 3, 9, 9], [1, 2], [7, 8], [1, 2, 3, 4], []]
    assert shared_prefix_lengths(seqs) == [4, 3, 2, 0, 4, 0]


def test_shared_prefix_lengths_matches_brute_force():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 3, size=rng.integers(0, 8)).tolist() for _ in range(60)]

    def lcp(a, b):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        return k

    brute = [max(lcp(s, t) for j, t in enumerate(seqs) if j != i) for i, s in enumerate(seqs)]
    assert shared_prefix_lengths(seqs) == brute


def test_reusable_prefix_lengths_match_brute_force():
    """Whole pages that some earlier sequence began with (a later one does not count)."""
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 2, size=rng.integers(0, 12)).tolist() for _ in range(80)]
    page = 2

    def lcp(a, b):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        return k

    brute = [max((lcp(s, t) for t in seqs[:i]), default=0) // page * page for i, s in enumerate(seqs)]
    assert reusable_prefix_lengths(seqs, page) == brute
    assert reusable_prefix_lengths([[5, 6, 7], [5, 6, 7], [5, 6]], 2) == [0, 2, 2]


def test_stats_by_chars_and_report():
    reqs = [
        WorkloadRequest(f"r{i}", 0.0, "SYSTEM" + q, None, 2, 6, "g")
        for i, q in enumerate(["abc", "abd", "xyz"])
    ]
    s = Workload("toy", reqs).stats()
    assert s["unit"] == "chars" and s["num_requests"] == 3
    assert s["prompt_len_mean"] == 9 and s["output_len_mean"] == 2
    assert s["shared_fraction"] == pytest.approx((8 + 8 + 6) / 27)
    table = compare_to_paper({"toy": s})
    assert "| toy" in table and "2494x" in table


def test_registry_and_unknown():
    assert set(ALL) <= set(WORKLOADS)
    with pytest.raises(KeyError):
        make_workload("nope", num_requests=1, seed=0)


# --------------------------------------------------------------------------- every generator


@needs_data
@pytest.mark.parametrize("name", ALL)
def test_size_and_determinism(name):
    a, b, c = _make(name, 0), _make(name, 0), _make(name, 1)
    assert len(a) == N
    assert len({r.request_id for r in a}) == N
    assert _key(a) == _key(b)
    assert _key(a) != _key(c)
    for r in a:
        assert (r.prompt is None) != (r.prompt_token_ids is None)
        assert r.max_tokens >= 1 and r.arrival >= 0.0


@needs_data
@pytest.mark.parametrize("name", PREBLE + ["shared_prefix"])
def test_preble_statistics(name):
    s = _make(name, n=60).stats()
    assert s["num_requests"] == 60
    assert s["shared_fraction"] > 0.5, s
    assert s["prompt_output_ratio"] > 10, s
    assert s["prompt_len_p50"] <= s["prompt_len_p99"]


@needs_data
def test_stats_with_byte_level_fallback_equals_token_ids():
    # videoqa without a tokenizer uses UTF-8 bytes for the text part
    w = _make("videoqa", n=10)
    for r in w.requests:
        text = bytes(r.prompt_token_ids[r.shared_prefix_len:]).decode("utf-8")
        assert "Question:" in text and "(4)" in text


@needs_data
def test_toolbench_zipf_vs_uniform():
    def top_share(pop):
        w = _make("toolbench", n=400, popularity=pop)
        counts = Counter(r.group for r in w.requests)
        return counts.most_common(1)[0][1] / 400, len(counts)

    zipf_top, zipf_tools = top_share("zipf")
    uni_top, uni_tools = top_share("uniform")
    assert zipf_top > 3 * uni_top
    assert zipf_tools < uni_tools
    w = _make("toolbench", n=20)
    for r in w.requests:
        assert r.prompt.startswith("You are AutoGPT") and f"Tool: {r.group}" in r.prompt


@needs_data
def test_agent_history_grows_within_episode():
    w = _make("agent", n=60)
    by_ep: dict[str, list[WorkloadRequest]] = {}
    for r in w.requests:
        by_ep.setdefault(r.group, []).append(r)
    assert len(by_ep) >= 2
    for reqs in by_ep.values():
        turns = [int(r.request_id.rsplit("-t", 1)[1]) for r in reqs]
        assert turns == list(range(len(reqs)))  # in order
        for prev, nxt in zip(reqs, reqs[1:]):
            assert nxt.prompt.startswith(prev.prompt[:-1]) and len(nxt.prompt) > len(prev.prompt)
        assert reqs[0].prompt.startswith("Interact with a household")


@needs_data
def test_videoqa_shared_video_prefix():
    w = _make("videoqa", n=60)
    by_vid: dict[str, list[WorkloadRequest]] = {}
    for r in w.requests:
        by_vid.setdefault(r.group, []).append(r)
        assert 0 < r.shared_prefix_len <= 8192 and r.shared_prefix_len % 256 == 0
        assert r.max_tokens == 8
    multi = [v for v in by_vid.values() if len(v) > 1]
    assert multi
    for reqs in multi:
        k = reqs[0].shared_prefix_len
        assert all(r.prompt_token_ids[:k] == reqs[0].prompt_token_ids[:k] for r in reqs)
    vids = list(by_vid.values())
    a, b = vids[0][0], vids[1][0]
    assert a.prompt_token_ids[:256] != b.prompt_token_ids[:256]


@needs_data
def test_loogle_and_programming_shapes():
    w = _make("loogle", n=30)
    assert all(1 <= r.max_tokens <= 45 for r in w.requests)
    assert all(r.prompt.endswith("Answer:") for r in w.requests)
    p = _make("programming", n=30)
    assert all(r.max_tokens <= 512 for r in p.requests)
    assert len({r.prompt[: r.shared_prefix_len] for r in p.requests}) == 1
    assert p.requests[0].shared_prefix_len > 6000  # chars of the ~2.4k-token demonstration


def test_shared_prefix_groups_and_popularity():
    w = make_workload("shared_prefix", num_requests=None, seed=3, groups=4, prompts_per_group=5,
                      system_len=64, question_len=8, output_len=4)
    assert len(w) == 20
    assert Counter(r.group for r in w.requests) == {f"group-{g}": 5 for g in range(4)}
    for r in w.requests:
        assert len(r.prompt_token_ids) == 72
    s = w.stats()
    assert s["shared_fraction"] == pytest.approx(64 / 72)
    z = make_workload("shared_prefix", num_requests=400, seed=3, groups=16, popularity="zipf",
                      system_len=8, question_len=4)
    counts = Counter(r.group for r in z.requests)
    assert counts.most_common(1)[0][1] > 2 * 400 / 16


# --------------------------------------------------------------------------- traces


@needs_data
def test_mooncake_blocks_and_arrivals():
    rows = [json.loads(ln) for ln in (DATA / "mooncake_synthetic_trace.jsonl").read_text().splitlines()[:50]]
    w = _make("mooncake", n=50, time_scale=0.5)
    blocks: dict[int, list[int]] = {}
    for row, r in zip(rows, w.requests):
        ids = r.prompt_token_ids
        assert len(ids) == row["input_length"]
        assert r.max_tokens == max(1, row["output_length"])
        assert r.arrival == pytest.approx((row["timestamp"] - rows[0]["timestamp"]) / 1000 * 0.5)
        for j, h in enumerate(row["hash_ids"]):
            blk = ids[j * 512:(j + 1) * 512]
            if len(blk) < 512:
                continue
            if h in blocks:
                assert blocks[h] == blk
            blocks[h] = blk
    distinct = list(blocks.values())
    assert len({tuple(b) for b in distinct}) == len(distinct)  # different ids, different blocks
    arr = [r.arrival for r in w.requests]
    assert arr == sorted(arr) and arr[0] == 0.0
    w2 = make_workload("mooncake", num_requests=None, seed=0, data_dir=DATA, max_requests=7)
    assert len(w2) == 7


@needs_data
def test_azure_offset_and_compression():
    import csv
    from datetime import datetime

    with (DATA / "AzureLLMInferenceTrace_code.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:260]

    def ts(s):
        head, frac = s.split(".")
        return datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp() + float("0." + frac)

    w = _make("azure", n=60, paper=True)
    assert w.params["start_row"] == 200 and w.params["time_scale"] == 0.7
    for k, r in enumerate(w.requests):
        row = rows[200 + k]
        assert r.request_id == f"azure-{200 + k}"
        assert len(r.prompt_token_ids) == int(row["ContextTokens"])
        assert r.max_tokens == max(1, int(row["GeneratedTokens"]))
        assert r.arrival == pytest.approx((ts(row["TIMESTAMP"]) - ts(rows[200]["TIMESTAMP"])) * 0.7, abs=1e-6)
    plain = _make("azure", n=60)
    assert plain.requests[0].request_id == "azure-0"
    arr = [r.arrival for r in w.requests]
    assert arr == sorted(arr)
    assert w.stats()["shared_fraction"] < 0.01  # unique prompts
