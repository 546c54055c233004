"""The demo showcase and the live-vs-simulated validation, end to end (slow: real clusters)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from preble.cli import app
from preble.core.routing import DEFAULT_POLICY

pytestmark = pytest.mark.slow


def test_demo_compares_the_default_policy_and_round_robin_and_writes_a_plot(tmp_path):
    png, doc_path = tmp_path / "demo.png", tmp_path / "demo.json"
    result = CliRunner().invoke(app, ["demo", "--requests", "12", "--rate", "4", "--out", str(png),
                                      "--json", str(doc_path)])
    assert result.exit_code == 0, result.output
    assert f"{DEFAULT_POLICY} vs round_robin" in result.output and "lower mean latency" in result.output
    assert png.stat().st_size > 10_000
    doc = json.loads(doc_path.read_text())
    assert list(doc["summaries"]) == [DEFAULT_POLICY, "round_robin"] and doc["commit"]
    for s in doc["summaries"].values():
        assert s["requests"] == 12 and s["errors"] == 0 and s["p99_latency"] >= s["mean_latency"] > 0


def test_validate_plays_the_same_requests_live_and_simulated(tiny_models, tmp_path):
    out = tmp_path / "val.json"
    result = CliRunner().invoke(app, [
        "bench", "validate", "--model", tiny_models("llama"), "--cost-model",
        "results/cost_models/cpu_smollm2-135m.json", "--num-requests", "16", "--rate", "8",
        "--num-pages", "64", "--param", "groups=2", "--param", "system_len=48", "--param", "question_len=8",
        "--param", "output_len=4", "--param", "vocab_size=500", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["errors"] == 0 and doc["real"]["requests"] == doc["sim"]["requests"] == 16
    assert doc["real"]["output_tokens"] == doc["sim"]["output_tokens"] == 64
    assert doc["real"]["hit_ratio"] > 0 and doc["sim"]["hit_ratio"] > 0
    assert set(doc["relative_error"]) >= {"mean_latency", "p99_latency", "mean_ttft"}
