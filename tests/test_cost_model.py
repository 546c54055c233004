"""CostModel: magnitudes of the defaults and the versioned JSON round trip."""

from __future__ import annotations

import json

import pytest

from preble.core.cost_model import CostModel


def test_defaults_have_the_right_order_for_an_8b_model_on_an_h100():
    cm = CostModel()
    assert 0.02 < cm.prefill_time(768) < 0.05  # 16 ms at 100% of peak; ~60% is reached
    assert cm.prefill_time(0, 5000) == 0.0
    assert cm.prefill_time(100, 4000) > cm.prefill_time(100, 0)  # attention over the cached part
    assert 0.006 <= cm.decode_step_time(1, 0) < 0.007  # the weight-read floor
    assert cm.decode_step_time(32, 64_000) > cm.decode_step_time(1, 0)
    assert cm.decode_time(100, 0.02) == pytest.approx(2.0)


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
