"""`preble bench engine --quick` runs end to end on CPU and reports every section."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from preble.cli import app


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
