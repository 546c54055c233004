"""The routing grid: its leaderboard arithmetic against a hand computation, and a small grid run
end to end (ladder, points, capacity search, report), with and without a deadline."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from preble.bench.compare_config import CompareConfig
from preble.bench.grid import (
    GridConfig,
    GridMismatch,
    config_of,
    gain_over_best_other,
    knees,
    leaderboard,
    markdown,
    merge,
    run,
    trace_rates,
)
from preble.bench.grid_rerun import rerun


def _row(policy, mean, p99, rate=1.0, workload="w", seed=0):
    return {"workload": workload, "replicas": 2, "memory": "h200", "rate": rate, "seed": seed,
            "policy": policy, "mean_latency": mean, "p99_latency": p99}


def test_leaderboard_by_hand():
    rows = [_row("a", 1.0, 2.0), _row("b", 2.0, 1.0), _row("round_robin", 4.0, 4.0),
            _row("a", 1.0, 1.0, rate=2.0), _row("b", 1.1, 1.0, rate=2.0), _row("round_robin", 0.9, 3.0, rate=2.0),
            _row("a", 3.0, 1.0, rate=2.0, seed=1), _row("b", 1.1, 1.0, rate=2.0, seed=1),
            _row("round_robin", 0.9, 3.0, rate=2.0, seed=1)]
    board = leaderboard({"rows": rows})
    a = board["a"]
    # rate 1: a is best in mean, 2x b's p99; rate 2 (seed means): a 2.0 / 1.0 against 0.9 / 1.0.
    assert a["geomean_mean"] == pytest.approx(math.sqrt(1.0 * (2.0 / 0.9)))
    assert a["geomean_p99"] == pytest.approx(math.sqrt(2.0 * 1.0))
    assert a["worst_mean"]["ratio"] == pytest.approx(2.0 / 0.9) and a["worst_mean"]["at"][3] == 2.0
    assert (a["within_3pct"], a["worse_than_round_robin"], a["points"]) == (0, 1, 2)
    assert board["round_robin"]["worse_than_round_robin"] == 0
    gain = gain_over_best_other({"rows": rows}, "b")
    assert gain["mean"] == pytest.approx(math.sqrt((1.0 / 2.0) * (0.9 / 1.1)))


def test_knees_follow_the_climb_and_skip_the_traces_own_rates():
    own = 16.0  # the trace's rate, taken as 8 replicas': 4 and 8 requests/s at 2 replicas
    trace_rungs = trace_rates(own, 2)
    assert trace_rungs == [4.0, 8.0]
    p99 = {1.0: 1.0, 2.0: 2.0, 3.0: 4.0, 4.5: 50.0, 4.0: 99.0, 8.0: 99.0}  # rungs pass 5x the lightest at 4.5
    rows = [_row("round_robin", 1.0, v, rate=r, workload="trace") for r, v in p99.items()]
    rows += [_row("round_robin", 1.0, v, rate=r, workload="calm") for r, v in ((1.0, 1.0), (2.0, 4.0))]
    doc = {"config": {"base": {"saturation_factor": 5.0}}, "rows": rows,
           "workloads": {"trace": {"own_rate": own}, "calm": {"own_rate": None}},
           "rates": [{"workload": "trace", "replicas": 2, "memory": "h200", "rates": sorted(p99)},
                     {"workload": "calm", "replicas": 2, "memory": "h200", "rates": [1.0, 2.0]}]}
    # The trace's own rate (4.0) is past 5x but is no rung; the calm ladder never passed: its top rung.
    assert knees(doc) == {("trace", 2, "h200"): (4.5, True), ("calm", 2, "h200"): (2.0, False)}


@pytest.fixture
def small(tiny_models):
    return GridConfig(workloads=("zipf",), replicas=(2,), memories=("h200",), policies=("round_robin", "latency"),
                      seeds=(0,), traces=(), capacity_workloads=("zipf",), capacity_replicas=(2,), capacity_steps=2,
                      base=CompareConfig(cost_model="results/cost_models/h200_llama3-8b.json",
                                         tokenizer=tiny_models("llama"), max_model_len=16_384, duration_s=10.0,
                                         min_requests=60, max_requests=120, max_rates=2),
                      jobs=2)


def test_a_small_grid_runs_every_point_and_the_capacity_search(small, tmp_path):
    checkpoints = []
    doc = json.loads(json.dumps(run(small, log=lambda _: None,
                                    checkpoint=lambda d: checkpoints.append(json.loads(json.dumps(d))))))
    assert checkpoints and checkpoints[0]["capacity"] == []  # written before the search
    rates = doc["rates"][0]["rates"]
    assert len(doc["rows"]) == 2 * len(rates) == doc["meta"]["runs"] == doc["meta"]["runs_planned"]
    assert {r["policy"] for r in doc["rows"]} == {"round_robin", "latency"}
    caps = {c["policy"]: c for c in doc["capacity"]}
    assert set(caps) == {"round_robin", "latency"} and all(c["capacity"] >= 0 and c["slo_s"] > 0 for c in caps.values())
    text = markdown(doc)
    assert "## Leaderboard" in text and "Capacity at the TTFT SLO" in text and "### zipf, 2 replicas, h200" in text
    assert config_of(doc).base == replace(small.base, tokenizer=None)  # a run can be repeated from its file


@pytest.mark.slow  # a command end to end; `make test-all` runs it
def test_a_rerun_measures_the_default_again_and_carries_the_peers_only_if_a_check_reproduces_them(small):
    # Capacity at 3 replicas, where the grid has no points: the file keeps no ladder for its bracket.
    cfg = replace(small, policies=("cache_aware", "latency"), capacity_replicas=(3,), capacity_steps=1)
    doc = json.loads(json.dumps(run(cfg, log=lambda _: None)))
    assert [r["replicas"] for r in doc["rates"]] == [2] and {c["replicas"] for c in doc["capacity"]} == {3}
    again = json.loads(json.dumps(rerun(doc, jobs=2, log=lambda _: None, tokenizer=small.base.tokenizer)))
    # Nothing changed since: the default's runs come out as before, the peers' are carried.
    assert sorted(doc["rows"], key=_order) == sorted(again["rows"], key=_order)
    assert sorted(doc["capacity"], key=_order) == sorted(again["capacity"], key=_order)
    assert again["meta"]["rerun"]["policies"] == ["latency"] and again["meta"]["rerun"]["checked_runs"] == 2
    assert again["meta"]["runs"] == len(doc["rates"][0]["rates"])
    # A carried row the check cannot reproduce: nothing is carried.
    top = max(doc["rates"][0]["rates"])
    tampered = next(r for r in doc["rows"] if r["policy"] == "cache_aware" and r["rate"] == top)
    tampered["p99_latency"] *= 1.01
    with pytest.raises(GridMismatch, match="check runs differ"):
        rerun(doc, jobs=2, log=lambda _: None, tokenizer=small.base.tokenizer)


def _order(row: dict) -> tuple:
    return row["policy"], row.get("rate", 0.0)


def test_the_capacity_search_needs_a_ladder_not_the_grids_points(small):
    """Capacity at a replica count the grid has no points at: its ladder is climbed (or taken from
    known rates) for the search's bracket, and no point is run."""
    known = (((("zipf", 3, "h200")), (2.0, 4.0)),)
    doc = run(GridConfig(**{**small.__dict__, "replicas": (), "capacity_replicas": (2, 3), "known_rates": known}),
              log=lambda _: None)
    assert doc["rows"] == [] and doc["rates"] == [] and doc["meta"]["runs_planned"] == 0
    assert sorted((c["replicas"], c["policy"]) for c in doc["capacity"]) == [
        (2, "latency"), (2, "round_robin"), (3, "latency"), (3, "round_robin")]
    assert "Capacity at the TTFT SLO" in markdown(doc)


def test_a_deadline_keeps_whole_points_only(small):
    doc = run(GridConfig(**{**small.__dict__, "deadline_s": 0.0}), log=lambda _: None)
    assert doc["meta"]["runs"] < doc["meta"]["runs_planned"] and doc["rows"] == [] and doc["capacity"] == []


def _doc(rows, rates, commit="abc", policies=("a", "b")):
    return {"meta": {"commit": commit, "date": f"2026-01-0{len(rows)}", "runs": len(rows), "runs_planned": 4,
                     "device": "simulated"},
            "config": {"policies": list(policies), "ablations": [], "seeds": [0], "base": {"page_size": 16},
                       "memory_pages": {"h200": 44_000}, "workloads": ["w"]},
            "workloads": {"w": {}}, "rates": [{"workload": "w", "replicas": 2, "memory": "h200", "rates": rates}],
            "rows": rows, "capacity": []}


def test_merge_fills_the_points_a_deadline_cut_and_keeps_the_first_copy():
    cut = _doc([_row("a", 1.0, 2.0), _row("b", 2.0, 3.0)], [1.0, 2.0])
    rest = _doc([_row("a", 9.0, 9.0), _row("b", 9.0, 9.0), _row("a", 1.5, 2.5, rate=2.0), _row("b", 2.5, 3.5, rate=2.0)],
                [1.0, 2.0])
    doc = merge([cut, rest])
    got = {(r["policy"], r["rate"]): r["mean_latency"] for r in doc["rows"]}
    assert got == {("a", 1.0): 1.0, ("b", 1.0): 2.0, ("a", 2.0): 1.5, ("b", 2.0): 2.5}
    assert (doc["meta"]["runs"], doc["meta"]["runs_planned"], doc["meta"]["date"]) == (4, 4, "2026-01-04")
    assert len(doc["meta"]["merged_from"]) == 2 and "merged from 2 runs" in markdown(doc, default="a")


def test_merge_takes_another_commit_only_where_shared_runs_agree_and_never_another_configuration():
    rows = [_row("a", 1.0, 2.0), _row("b", 2.0, 3.0)]
    with pytest.raises(GridMismatch, match="no run in common"):
        merge([_doc(rows, [1.0]), _doc([_row("a", 1.0, 2.0, rate=2.0)], [2.0], commit="def")])
    with pytest.raises(GridMismatch, match="1 of 2 runs in common give other results"):
        merge([_doc(rows, [1.0]), _doc([rows[0], _row("b", 2.0, 3.5)], [1.0], commit="def")])
    rounded = [rows[0], _row("b", 2.0, 3.0 * (1 + 1e-15))]  # the same run summed in another order
    later = _doc([*rounded, _row("a", 1.0, 1.0, rate=2.0), _row("b", 1.0, 1.0, rate=2.0)], [1.0, 2.0], commit="def")
    merged = merge([_doc(rows, [1.0]), later])
    assert [m["commit"] for m in merged["meta"]["merged_from"]] == ["abc", "def"]
    assert "commit abc and def (the runs they share" in markdown(merged, default="a")
    with pytest.raises(GridMismatch, match="policies"):
        merge([_doc(rows, [1.0]), _doc(rows, [1.0], policies=("a", "c"))])
    other = _doc(rows, [1.0])
    other["workloads"]["w"] = {"mean_prompt_tokens": 7}
    with pytest.raises(GridMismatch, match="prepared differently"):
        merge([_doc(rows, [1.0]), other])


def test_merge_joins_grids_of_two_memory_regimes_whose_shared_regimes_agree():
    h200 = _doc([_row("a", 1.0, 2.0), _row("b", 2.0, 3.0)], [1.0])
    paper = _doc([{**r, "memory": "paper"} for r in (_row("a", 3.0, 4.0), _row("b", 1.0, 1.0))], [1.0])
    paper["config"]["memory_pages"] = {"paper": 15_200}
    paper["rates"] = [{**paper["rates"][0], "memory": "paper"}]
    doc = merge([h200, paper])
    assert doc["config"]["memory_pages"] == {"h200": 44_000, "paper": 15_200}
    assert sorted({r["memory"] for r in doc["rows"]}) == ["h200", "paper"] and len(doc["rows"]) == 4
    assert doc["meta"]["runs_planned"] == 4
    paper["config"]["memory_pages"] = {"paper": 15_200, "h200": 40_000}
    with pytest.raises(GridMismatch, match="memory 'h200': 44000 and 40000 pages"):
        merge([h200, paper])
