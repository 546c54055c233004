"""CostModel: the committed H100 measurement and the built-in defaults against it, the versioned
JSON round trip, tensor parallelism and the array forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from preble.core.cost_model import CostModel

H100_FILE = Path(__file__).resolve().parents[1] / "results" / "cost_models" / "h100_llama3-8b.json"


def test_the_committed_h100_model_is_the_fit_of_its_own_samples():
    """The measured file: its model is what `preble profile`'s fit makes of the samples it holds,
    with the errors it states."""
    from preble.bench.profile import fit

    doc = json.loads(H100_FILE.read_text())
    loaded = CostModel.load(H100_FILE)
    refit, errors = fit(doc["samples"]["prefill"], doc["samples"]["decode"], loaded.description)
    for name in "abcdef":
        assert getattr(refit, name) == pytest.approx(getattr(loaded, name), rel=1e-6), name
    for part in ("prefill", "decode"):
        assert errors[part] == pytest.approx(doc["fit"][part], rel=1e-6)
    assert doc["meta"]["device"].startswith("NVIDIA H100") and doc["config"]["model"] == "random:llama3-8b"


def test_the_builtin_defaults_against_the_h100_measurement():
    """The built-in constants come from no file: they are first-principles numbers for the same
    model and device (the module docstring). Against the measurement: a decode step cannot beat
    reading the weights once, so the built-in floor (that read at full bandwidth) is below every
    measured batch-1 step and the fitted floor; and the shapes the router relies on hold."""
    builtin, measured = CostModel(), CostModel.load(H100_FILE)
    assert "not measured" in builtin.description
    samples = json.loads(H100_FILE.read_text())["samples"]["decode"]
    batch_one = [s for s in samples if s["batch"] == 1]
    assert batch_one and all(builtin.decode_step_time(1, s["context"]) < s["seconds"] for s in batch_one)
    assert builtin.decode_step_time(1, 0) < measured.decode_step_time(1, 0)
    for cm in (builtin, measured):
        assert cm.prefill_time(0, 5000) == 0.0
        assert cm.prefill_time(100, 4000) > cm.prefill_time(100, 0)  # attention over the cached part
        assert cm.decode_step_time(32, 64_000) > cm.decode_step_time(1, 0)
    assert builtin.decode_time(100, 0.02) == pytest.approx(2.0)


def test_json_round_trip_and_version_check(tmp_path):
    cm = CostModel(a=1e-3, b=2e-5, c=3e-9, d=5e-3, e=1e-5, f=4e-8, description="fitted on test")
    path = tmp_path / "cost.json"
    cm.save(path)
    assert CostModel.load(path) == cm
    doc = json.loads(path.read_text())
    assert doc["schema"] == "preble.cost_model" and doc["version"] == 1
    doc["version"] = 2
    with pytest.raises(ValueError, match="v1"):
        CostModel.from_dict(doc)


def test_tensor_parallel_split_against_first_principles():
    """Compute and memory terms divide by the degree; each pass pays 2 all-reduces per layer."""
    from preble.core.cost_model import Interconnect

    base, link = CostModel(), Interconnect(latency_s=1e-5, bytes_per_s=1e11, hidden_size=1000, num_layers=10,
                                           dtype_bytes=2)
    assert base.tensor_parallel(1, link) is base
    split = base.tensor_parallel(4, link)
    ring_bytes_per_token = 20 * 2 * 3 / 4 * 1000 * 2  # 20 all-reduces of 2000 bytes per token, ring factor 2(n-1)/n
    assert split.b == pytest.approx(base.b / 4 + ring_bytes_per_token / 1e11)
    assert split.a == pytest.approx(base.a + 20 * 1e-5)
    assert (split.c, split.f) == pytest.approx((base.c / 4, base.f / 4))
    assert split.d == pytest.approx(base.d / 4 + 20 * 1e-5)
    # Big prefills gain nearly the degree; a lone decode step gains less (fixed host costs stay).
    assert 3.5 < base.prefill_time(8000) / split.prefill_time(8000) < 4
    assert 1 < base.decode_step_time(1, 100) / split.decode_step_time(1, 100) < 4
    with pytest.raises(ValueError):
        base.tensor_parallel(0)


def test_simulated_replica_on_more_gpus_holds_more_and_runs_faster():
    from preble.sim.cluster import SimCluster, SimConfig, SimRequest

    reqs = [SimRequest(f"r{i}", 0.05 * i, list(range(i, i + 2000)), 8) for i in range(40)]
    one = SimCluster(SimConfig(replicas=1, num_pages=200))
    four = SimCluster(SimConfig(replicas=1, num_pages=200, tensor_parallel=4))
    assert four.replicas[0].allocator.num_pages == 4 * one.replicas[0].allocator.num_pages
    assert four.cost == CostModel().tensor_parallel(4)

    def mean_latency(cluster: SimCluster) -> float:
        records = cluster.run(reqs)
        return sum(r.latency for r in records) / len(records)

    assert mean_latency(four) < mean_latency(one) / 2


@given(st.lists(st.tuples(st.integers(-5, 50_000), st.integers(0, 100_000), st.integers(-2, 512)), min_size=1,
                max_size=20))
def test_array_times_are_the_scalar_times_of_each_element(rows):
    """The router prices every worker at once with the array forms; they must agree exactly."""
    cost = CostModel()
    new, cached, batch = (np.array(col) for col in zip(*rows))
    assert cost.prefill_times(new, cached).tolist() == [cost.prefill_time(int(n), int(c)) for n, c in zip(new, cached)]
    assert cost.decode_step_times(batch, cached).tolist() == [
        cost.decode_step_time(int(b), int(c)) for b, c in zip(batch, cached)]
