"""The benchmark commands run end to end on CPU at their --quick sizes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from preble.cli import app


@pytest.mark.slow  # a command end to end; `make test-all` runs it
def test_engine_benchmark_quick_run_on_cpu(tmp_path):
    out = tmp_path / "engine.json"
    result = CliRunner().invoke(app, ["bench", "engine", "--model", "random:qwen2.5-0.5b", "--device", "cpu",
                                      "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["ceilings"]["copy_gbps"] > 0 and data["prefill"][0]["tokens_per_s"] > 0
    assert data["ttft"]["with_cached_prefix_s"] > 0
    assert [d["batch"] for d in data["decode"]] == [1, 2]
    assert data["shared_prefix_offline"]["hit_ratio"] > 0
    assert out.with_suffix(".md").read_text().startswith("# Engine benchmark")


@pytest.mark.slow  # a command end to end; `make test-all` runs it
def test_profile_fits_a_cost_model_on_cpu(tmp_path):
    from preble.core.cost_model import CostModel

    out = tmp_path / "cm.json"
    result = CliRunner().invoke(app, ["profile", "--model", "random:qwen2.5-0.5b", "--device", "cpu", "--grid", "quick",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    model = CostModel.from_dict(data["cost_model"])
    assert model.prefill_time(96) > model.prefill_time(8) > 0
    assert model.decode_step_time(4, 512) >= model.decode_step_time(1, 32) > 0
    assert len(data["samples"]["prefill"]) == 6 and len(data["samples"]["decode"]) == 4
    assert 0 <= data["fit"]["decode"]["mean_rel_error"] < 1


def test_sim_command_prints_a_summary():
    result = CliRunner().invoke(app, ["sim", "--workload", "shared_prefix", "--replicas", "4", "--policy", "e2",
                                      "--rate", "20", "--num-requests", "64", "--param", "groups=4",
                                      "--param", "system_len=256", "--param", "question_len=16", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["requests"] == 64 and summary["policy"] == "e2"
    for key in ("mean_latency", "p50_latency", "p99_latency", "mean_ttft", "p99_ttft", "throughput"):
        assert summary[key] > 0
    assert summary["hit_ratio"] > 0.5
