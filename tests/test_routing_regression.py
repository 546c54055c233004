"""The default policy on a real trace: a slice of the Mooncake trace on 16 simulated H200 replicas.

A guard against regressions of the routing grid's headline: the default policy must not fall
more than 10% behind SGLang's cache_aware in mean latency here (it was 2-4x behind before the
default changed), nor behind round_robin in mean or p99.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from preble.bench.requests import sim_request
from preble.bench.workloads import make_workload
from preble.bench.workloads.base import default_data_dir
from preble.bench.workloads.trace import MOONCAKE_FILE
from preble.core.cost_model import CostModel
from preble.core.routing import DEFAULT_POLICY
from preble.sim import SimConfig, simulate, summarize

ROOT = Path(__file__).resolve().parents[1]
H200 = ROOT / "results" / "cost_models" / "h200_llama3-8b.json"


@pytest.mark.skipif(not (default_data_dir() / MOONCAKE_FILE).is_file(), reason="Mooncake trace not in the data folder")
def test_default_policy_keeps_up_with_cache_aware_on_a_mooncake_slice():
    # 800 rows at 4x the trace's rate: the trace's own load per replica on 16 replicas x 2.
    wl = make_workload("mooncake", num_requests=800, seed=0, time_scale=0.25)
    reqs = [sim_request(r) for r in wl.requests]
    cost = CostModel.load(H200)

    def run(policy: str) -> dict:
        return summarize(simulate(reqs, SimConfig(replicas=16, policy=policy, num_pages=44_000), cost))

    default, cache_aware, round_robin = run(DEFAULT_POLICY), run("cache_aware"), run("round_robin")
    assert default["requests"] == 800
    assert default["mean_latency"] <= 1.10 * cache_aware["mean_latency"]
    assert default["mean_latency"] <= round_robin["mean_latency"]
    assert default["p99_latency"] <= round_robin["p99_latency"]
