"""Per-worker calibration of the cost model from the pass times in load reports."""

from __future__ import annotations

import random

import pytest

from preble.core.cost_model import CostModel
from preble.core.messages import StepTotals
from preble.core.routing.calibration import Calibration, CalibrationConfig
from preble.core.scheduler import ScheduledChunk, SchedulerOutput
from preble.core.step_stats import StepMeter, split_pass

COST = CostModel(a=0.01, b=1e-4, c=1e-8, d=0.005, e=1e-4, f=1e-7)


def passes(rng: random.Random, alpha: float, beta: float, n: int, start: StepTotals) -> list[StepTotals]:
    """Totals after each of n reports of a worker whose prefill runs alpha x and decode beta x the model."""
    out, t = [], start
    for _ in range(n):
        chunks, tokens, pairs = rng.randrange(0, 4), 0, 0.0
        for _ in range(chunks):
            k, before = rng.randrange(16, 2048), rng.randrange(0, 8000)
            tokens, pairs = tokens + k, pairs + k * (k + before)
        dpasses = rng.randrange(0, 30)
        seqs, ctx = dpasses * rng.randrange(1, 64), dpasses * rng.randrange(100, 100_000)
        seconds = (alpha * (COST.a * chunks + COST.b * tokens + COST.c * pairs)
                   + beta * (COST.d * dpasses + COST.e * seqs + COST.f * ctx))
        t = StepTotals(t.passes + chunks + dpasses, t.seconds + seconds, t.prefill_chunks + chunks,
                       t.prefill_tokens + tokens, t.prefill_pairs + pairs, t.decode_passes + dpasses,
                       t.decode_seqs + seqs, t.decode_context + ctx)
        out.append(t)
    return out


def test_scales_converge_to_the_workers_speed_and_price_its_work():
    cal = Calibration(COST)
    rng = random.Random(1)
    for i, totals in enumerate(passes(rng, 3.0, 2.0, 60, StepTotals())):
        cal.on_report("w", totals, now=0.5 * i)
    alpha, beta = cal.scales("w")
    assert alpha == pytest.approx(3.0, rel=0.02) and beta == pytest.approx(2.0, rel=0.02)
    assert cal.scales("other") == (1.0, 1.0)


def test_a_worker_that_changes_speed_is_followed_within_a_few_half_lives():
    cal = Calibration(COST, CalibrationConfig(half_life_s=10.0))
    rng = random.Random(2)
    slow = passes(rng, 4.0, 4.0, 40, StepTotals())
    fast = passes(rng, 1.0, 1.0, 120, slow[-1])
    for i, totals in enumerate(slow + fast):
        cal.on_report("w", totals, now=1.0 * i)
    assert all(s == pytest.approx(1.0, rel=0.05) for s in cal.scales("w"))


def test_decodes_alone_leave_the_prefill_scale_at_the_prior():
    cal = Calibration(COST)
    t = StepTotals()
    for i in range(30):
        t = StepTotals(t.passes + 10, t.seconds + 10 * 2.0 * COST.decode_step_time(16, 32_000), 0, 0, 0.0,
                       t.decode_passes + 10, t.decode_seqs + 160, t.decode_context + 320_000)
        cal.on_report("w", t, now=float(i))
    alpha, beta = cal.scales("w")
    assert alpha == pytest.approx(1.0) and beta == pytest.approx(2.0, rel=0.01)


def test_a_restarted_worker_starts_over_and_the_model_is_its_own_when_exact():
    cal = Calibration(COST)
    rng = random.Random(3)
    for i, totals in enumerate(passes(rng, 1.0, 1.0, 20, StepTotals())):
        cal.on_report("w", totals, now=float(i))
    assert cal.scales("w") == (1.0, 1.0)  # a worker as fast as the model: exactly the model's own scales
    cal.on_report("w", StepTotals(passes=1, seconds=9.0, prefill_chunks=1, prefill_tokens=10), now=30.0)
    assert cal.scales("w") == pytest.approx((1.0, 1.0))  # counters went back: a new start, no jump


def test_the_meter_splits_passes_as_the_cost_model_prices_them():
    class Req:
        def __init__(self, outputs):
            self.output_token_ids = outputs

    out = SchedulerOutput([ScheduledChunk(Req([]), 100, 50, True), ScheduledChunk(Req([7]), 30, 1, True),
                           ScheduledChunk(Req([7, 8]), 40, 1, True), ScheduledChunk(Req([]), 0, 1, False)])
    prefills, decodes, context = split_pass(out)
    assert prefills == [(50, 100), (1, 0)] and (decodes, context) == (2, 31 + 41)
    meter = StepMeter()
    meter.record(out, 0.25)
    assert meter.totals == StepTotals(1, 0.25, 2, 51, 50 * 150 + 1 * 1, 1, 2, 72)
