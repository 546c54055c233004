"""`--trace FILE`: both JSONL formats against a naive model, every malformed row, and the CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from preble.bench.workloads import make_workload
from preble.bench.workloads.trace_file import TraceError, load_trace
from preble.cli import app

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _lcp(a: list, b: list) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


# --------------------------------------------------------------------------- Mooncake-style


def test_mooncake_rows_round_trip(tmp_path):
    rows = [
        {"timestamp": 2000, "input_length": 10, "output_length": 5, "hash_ids": [7, 8, 9]},
        {"timestamp": 500, "input_length": 12, "output_length": 0, "hash_ids": [7, 8, 4]},  # earliest
        {"timestamp": 500, "input_length": 6, "output_length": 3, "hash_ids": [7]},  # tie: file order; padded
        {"timestamp": 3500, "input_length": 3, "output_length": 2, "hash_ids": [9]},  # 9 first: a new position
    ]
    w = load_trace(_write(tmp_path / "mc.jsonl", rows), block_size=4, time_scale=0.5)
    assert w.name == "mc.jsonl" and w.params["format"] == "mooncake"
    order = [1, 2, 0, 3]  # sorted by timestamp, ties in file order
    assert [r.request_id for r in w.requests] == ["trace-0", "trace-1", "trace-2", "trace-3"]
    assert [r.arrival for r in w.requests] == [0.0, 0.0, 0.75, 1.5]  # (ms - 500) / 1000 x 0.5
    assert [r.max_tokens for r in w.requests] == [max(1, rows[i]["output_length"]) for i in order]
    p = [r.prompt_token_ids for r in w.requests]
    assert [len(x) for x in p] == [rows[i]["input_length"] for i in order]
    blk = {7: p[0][0:4], 8: p[0][4:8], 4: p[0][8:12]}
    assert p[1][:4] == blk[7] and p[1][4:] != p[0][4:6]  # block 7 shared, then unique padding
    assert p[2][:8] == blk[7] + blk[8]  # ids 7, 8 at positions 0, 1: the same blocks
    assert p[2][8:10] == p[3][:2]  # id 9 at position 2 and at 0: the same block, cut to each length
    assert len({tuple(b) for b in [*blk.values(), p[3]]}) == 4  # different ids, different blocks


@st.composite
def mooncake_traces(draw):
    """Rows whose hash ids branch from a few shared roots, in any timestamp order."""
    block = draw(st.integers(1, 6))
    rows = []
    for _ in range(draw(st.integers(1, 12))):
        ids = draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))
        n = draw(st.integers(max(1, (len(ids) - 1) * block + 1), len(ids) * block + 5))
        rows.append({"timestamp": draw(st.integers(0, 10_000)), "input_length": n,
                     "output_length": draw(st.integers(0, 50)), "hash_ids": ids})
    return block, rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=mooncake_traces(), scale=st.sampled_from([0.25, 1.0, 2.0]))
def test_mooncake_prefix_structure_matches_the_hash_ids(tmp_path, trace, scale):
    block, rows = trace
    w = load_trace(_write(tmp_path / "h.jsonl", rows), block_size=block, time_scale=scale)
    ordered = sorted(rows, key=lambda r: r["timestamp"])  # naive model: a stable sort
    t0 = ordered[0]["timestamp"]
    for row, req in zip(ordered, w.requests, strict=True):
        assert len(req.prompt_token_ids) == row["input_length"]
        assert req.arrival == pytest.approx((row["timestamp"] - t0) / 1000 * scale)
        assert req.max_tokens == max(1, row["output_length"])
    for i, (a, ra) in enumerate(zip(ordered, w.requests)):
        for b, rb in list(zip(ordered, w.requests))[i + 1:]:
            same = _lcp(a["hash_ids"], b["hash_ids"])  # blocks shared by position
            shared = min(same * block, a["input_length"], b["input_length"])
            assert ra.prompt_token_ids[:shared] == rb.prompt_token_ids[:shared]
            full = min(len(a["hash_ids"]), len(b["hash_ids"]))
            if same < full and (same + 1) * block <= min(a["input_length"], b["input_length"]):
                # the first differing ids are whole different blocks: the prompts differ there
                lo, hi = same * block, (same + 1) * block
                assert ra.prompt_token_ids[lo:hi] != rb.prompt_token_ids[lo:hi]


@pytest.mark.skipif(not DATA.is_dir(), reason=f"workload data missing: {DATA}")
def test_the_mooncake_trace_by_path_is_the_mooncake_workload():
    w = load_trace(DATA / "mooncake_synthetic_trace.jsonl", num_requests=30, seed=2)
    ref = make_workload("mooncake", num_requests=30, seed=2, data_dir=DATA)
    assert [(r.arrival, r.prompt_token_ids, r.max_tokens, r.group) for r in w.requests] == \
           [(r.arrival, r.prompt_token_ids, r.max_tokens, r.group) for r in ref.requests]


# --------------------------------------------------------------------------- token ids


def test_token_rows_round_trip(tmp_path):
    system = [11, 12, 13, 14, 15]
    rows = [
        {"timestamp": 1.5, "prompt_token_ids": system + [1, 2], "output_length": 4},
        {"timestamp": 0.25, "prompt_token_ids": system + [3], "output_length": 0, "note": "extra fields ignored"},
        {"timestamp": 3, "prompt_token_ids": [9], "output_length": 7},
    ]
    w = load_trace(_write(tmp_path / "tok.jsonl", rows), time_scale=2.0, vocab_size=100)
    assert w.params["format"] == "tokens"
    assert [r.prompt_token_ids for r in w.requests] == [system + [3], system + [1, 2], [9]]
    assert [r.arrival for r in w.requests] == [0.0, 2.5, 5.5]  # seconds from the earliest, x 2
    assert [r.max_tokens for r in w.requests] == [1, 4, 7]
    assert _lcp(w.requests[0].prompt_token_ids, w.requests[1].prompt_token_ids) == len(system)
    assert len(load_trace(tmp_path / "tok.jsonl", num_requests=2)) == 2


# --------------------------------------------------------------------------- malformed files

MC = {"timestamp": 0, "input_length": 8, "output_length": 2, "hash_ids": [1]}
TK = {"timestamp": 0.0, "prompt_token_ids": [5, 6], "output_length": 2}


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


BAD = [  # (first row, bad row, field named, substring of the problem)
    (MC, _without(MC, "output_length"), "output_length", "missing"),
    (MC, _without(MC, "timestamp"), "timestamp", "missing"),
    (MC, {**MC, "input_length": "8"}, "input_length", "integer"),
    (MC, {**MC, "input_length": 8.0}, "input_length", "integer"),
    (MC, {**MC, "output_length": True}, "output_length", "integer"),
    (MC, {**MC, "output_length": -1}, "output_length", ">= 0"),
    (MC, {**MC, "input_length": 0}, "input_length", ">= 1"),
    (MC, {**MC, "timestamp": "soon"}, "timestamp", "finite number"),
    (MC, '{"timestamp": NaN, "input_length": 8, "output_length": 2, "hash_ids": [1]}', "timestamp", "finite"),
    (MC, {**MC, "hash_ids": 3}, "hash_ids", "list"),
    (MC, {**MC, "hash_ids": [1, "2"]}, "hash_ids[1]", "integer"),
    (MC, {**MC, "hash_ids": [1, 2, 3]}, "hash_ids", "block size"),  # 8 tokens are 2 blocks of 4
    (MC, _without(MC, "hash_ids"), "hash_ids", "missing"),
    (MC, {**TK}, "prompt_token_ids", "one format per file"),
    (TK, {**MC}, "hash_ids", "one format per file"),
    (TK, {**TK, "prompt_token_ids": []}, "prompt_token_ids", "empty"),
    (TK, {**TK, "prompt_token_ids": [5, -1]}, "prompt_token_ids[1]", "[0, 100)"),
    (TK, {**TK, "prompt_token_ids": [100]}, "prompt_token_ids[0]", "[0, 100)"),
    (TK, {**TK, "prompt_token_ids": [5, 6.5]}, "prompt_token_ids[1]", "integer"),
    (TK, _without(TK, "output_length"), "output_length", "missing"),
    (TK, '{"timestamp": 1, "prompt_token_ids": [5]', None, "not valid JSON"),
    (TK, "[1, 2]", None, "JSON object"),
]


@pytest.mark.parametrize(("first", "bad", "field", "problem"), BAD)
def test_a_malformed_row_names_file_line_and_field(tmp_path, first, bad, field, problem):
    path = _write(tmp_path / "bad.jsonl", [first, first, "", bad, first])  # a blank line still counts
    with pytest.raises(TraceError) as info:
        load_trace(path, block_size=4, vocab_size=100)
    err = info.value
    assert isinstance(err, ValueError) and err.line == 4 and err.field == field
    assert str(err).startswith(f"{path}:4: ") and problem in str(err) and "\n" not in str(err)
    if field:
        assert f"field {field!r}" in str(err)


@pytest.mark.parametrize("first", [{"timestamp": 0, "output_length": 1}, {**MC, "prompt_token_ids": [1]}])
def test_the_first_row_must_name_exactly_one_format(tmp_path, first):
    with pytest.raises(TraceError, match=r":1: the first row needs exactly one of 'hash_ids'.*'prompt_token_ids'"):
        load_trace(_write(tmp_path / "f.jsonl", [first]))


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_an_empty_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(TraceError, match="has no requests") as info:
        load_trace(path)
    assert info.value.line is None
    with pytest.raises(TraceError, match="cannot be read"):
        load_trace(tmp_path / "missing.jsonl")


def test_the_error_survives_the_trip_from_a_worker_process(tmp_path):
    """The benchmarks load traces in worker processes; the parent unpickles what they raise."""
    with pytest.raises(TraceError) as info:
        load_trace(tmp_path / "missing.jsonl")
    back = pickle.loads(pickle.dumps(info.value))
    assert (type(back), str(back), back.path, back.line, back.field) == (
        TraceError, str(info.value), str(tmp_path / "missing.jsonl"), None, None)


# --------------------------------------------------------------------------- the commands

SHARED = list(range(1000, 1048))  # 3 pages of 16 tokens shared by every prompt


def _token_trace(tmp_path: Path, n: int = 6) -> Path:
    rows = [{"timestamp": 0.1 * i, "prompt_token_ids": SHARED + [2000 + i] * 5, "output_length": 3}
            for i in range(n)]
    return _write(tmp_path / "traffic.jsonl", rows)


def test_sim_replays_a_trace_file(tmp_path):
    path = _token_trace(tmp_path)
    base = ["sim", "--trace", str(path), "--replicas", "2", "--num-pages", "64"]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    for key in ("mean_latency", "p99_latency", "throughput", "hit_ratio", "branches"):
        assert key in result.output
    summary = json.loads(CliRunner().invoke(app, [*base, "--json"]).output.strip().splitlines()[-1])
    assert summary["requests"] == 6 and summary["workload"] == "traffic.jsonl"  # the whole file by default
    assert summary["hit_ratio"] > 0  # the shared prefix was cached
    limited = CliRunner().invoke(app, [*base, "--json", "--num-requests", "4"])
    assert json.loads(limited.output.strip().splitlines()[-1])["requests"] == 4


@pytest.mark.parametrize("command", [["sim"], ["bench", "serve", "--url", "http://127.0.0.1:9"]])
def test_a_malformed_trace_exits_2_with_one_line(tmp_path, command):
    path = _write(tmp_path / "bad.jsonl", [MC, {**MC, "output_length": -3}])
    result = CliRunner().invoke(app, [*command, "--trace", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"Error: {path}:2: field 'output_length' must be >= 0, got -3"]


def test_trace_and_workload_together_are_a_usage_error(tmp_path):
    path = _token_trace(tmp_path)
    result = CliRunner().invoke(app, ["sim", "--trace", str(path), "--workload", "shared_prefix"])
    assert result.exit_code == 2 and "give --trace or --workload, not both" in result.output
    result = CliRunner().invoke(app, ["sim", "--trace", str(path), "--param", "groups=4"])
    assert result.exit_code == 2 and "--param" in result.output
