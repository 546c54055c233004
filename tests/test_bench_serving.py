"""`preble bench serving --quick` end to end on the CPU: a cluster over a random-weight folder, the
same requests through it and through the engine in-process, and the first token's hops."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from preble.bench.serving import HOPS
from preble.bench.serving_config import QUICK
from preble.cli import app
from preble.core.pages import DEFAULT_PAGE_SIZE


@pytest.mark.slow  # a command end to end; `make test-all` runs it
def test_quick_serving_benchmark_measures_both_paths(tmp_path):
    out = tmp_path / "serving.json"
    result = CliRunner().invoke(app, ["bench", "serving", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    served, local = doc["served"], doc["in_process"]
    assert "through router + worker" in out.with_suffix(".md").read_text()
    # Every request got exactly its tokens, both ways, streamed and not.
    rows = served["concurrency"]
    assert [(r["concurrency"], r["stream"]) for r in rows] == [(n, s) for n in QUICK["concurrency"] for s in (True, False)]
    assert all(r["output_tokens"] == r["concurrency"] * QUICK["output_tokens"] for r in rows + local["concurrency"])
    assert all(r["failed"] == 0 for r in rows)
    # The router, the frontend and the engine loop were each found and used CPU (over all rows: a
    # short row may fall within one tick of the kernel's CPU clock).
    assert all(list(r["servers_cpu"]) == ["router", "frontend", "engine"] for r in rows)
    assert all(sum(r["servers_cpu"][role]["cores"] for r in rows) > 0 for role in ("router", "frontend", "engine"))
    # The cached-prefix requests found the prefix's whole pages in the worker's cache.
    assert served["cached_tokens"] == QUICK["cached_prefix"] // DEFAULT_PAGE_SIZE * DEFAULT_PAGE_SIZE
    # Each hop of the first token's path was stamped, in order.
    hops = served["hops_cold_ms"]
    assert list(hops) == [f"{a}->{b}" for a, b in zip(HOPS, HOPS[1:])]
    assert all(ms >= 0 for ms in hops.values())
    assert served["ttft_cold_ms"] >= sum(hops.values()) * 0.5
    assert doc["meta"]["commit"]


def test_engine_options_reach_both_halves_alike():
    """The served worker gets, as command-line options, the engine options the in-process engine
    gets as fields: KV memory and piecewise graphs."""
    from preble.bench.serving import _engine_options
    from preble.bench.serving_config import ServingBenchConfig
    from preble.engine.config import EngineConfig

    options = _engine_options(ServingBenchConfig(num_pages=4096, piecewise_graph_max_tokens=0))
    assert options == {"num_pages": 4096, "piecewise_graph_max_tokens": 0}  # 0 (eager) passes on too
    EngineConfig(model="m", **options)  # every name is an engine field
    assert _engine_options(ServingBenchConfig()) == {
        "piecewise_graph_max_tokens": EngineConfig.piecewise_graph_max_tokens}
