"""`preble bench soak`: a 60-second soak of a 3-worker CPU cluster passes every check, and the
pieces that decide them (each request's outcome, the RSS windows, the KV comparison, the hold
before it) give the right answer on hand-built cases, failures included."""

from __future__ import annotations

import asyncio
import json

import httpx
import msgspec
import pytest

from preble.bench.soak import Observed, document, rss_windows, run, write
from preble.bench.soak_chaos import ChaosEvent, KVCheck, kv_check
from preble.bench.soak_config import DOCUMENTED_5XX, SoakConfig
from preble.bench.soak_load import LoadRun, Traffic, plan_requests
from preble.bench.soak_outcomes import (
    DONE,
    Outcome,
    RequestResult,
    Verdict,
    classify_stream,
    classify_whole,
    parse_sse_line,
    tally,
    undocumented_5xx,
)
from preble.core.kv_events import ROOT_HASH, PagesStored, chain_hashes
from preble.core.messages import KVEventBatch

# ---------------------------------------------------------------------------- outcomes


def chunk(text: str, reason: str | None = None) -> dict:
    return {"choices": [{"index": 0, "text": text, "finish_reason": reason}]}


USAGE_4 = {"choices": [], "usage": {"completion_tokens": 4}}


def test_a_stream_with_done_finish_reason_and_every_token_is_completed():
    assert classify_stream([chunk("a"), chunk("bcd", "length"), USAGE_4, DONE], 4).outcome is Outcome.COMPLETED


def test_a_stream_that_ends_without_done_or_an_error_is_lost():
    verdict = classify_stream([chunk("a"), chunk("b")], 4)
    assert verdict.outcome is Outcome.LOST and "without [DONE]" in verdict.detail
    assert classify_stream([], 4).outcome is Outcome.LOST


def test_a_stream_cut_short_with_a_finish_reason_but_no_error_is_lost():
    short = {"choices": [], "usage": {"completion_tokens": 2}}
    verdict = classify_stream([chunk("a"), chunk("b", "stop"), short, DONE], 4)
    assert verdict.outcome is Outcome.LOST and "2 of 4 tokens" in verdict.detail
    assert classify_stream([chunk("a"), chunk("b"), USAGE_4, DONE], 4).outcome is Outcome.LOST  # no finish reason


def test_an_error_event_with_a_message_is_errored_with_its_code():
    event = {"error": {"message": "the worker failed mid-stream", "type": "server_error", "code": 502}}
    verdict = classify_stream([chunk("a"), event, DONE], 4)
    assert (verdict.outcome, verdict.error_code, verdict.message) == (Outcome.ERRORED, 502,
                                                                      "the worker failed mid-stream")
    assert classify_stream([chunk("a"), {"error": {"message": ""}}, DONE], 4).outcome is Outcome.LOST


def test_whole_answers_and_error_statuses():
    full = {"choices": [{"index": 0, "finish_reason": "length"}], "usage": {"completion_tokens": 4}}
    assert classify_whole(200, full, 4).outcome is Outcome.COMPLETED
    assert classify_whole(200, full, 5).outcome is Outcome.LOST
    assert classify_whole(200, None, 4).outcome is Outcome.LOST
    no_worker = {"error": {"message": "no healthy worker", "type": "unavailable", "code": 503}}
    assert classify_whole(503, no_worker, 4) == Verdict(Outcome.ERRORED, 503, 503, "no healthy worker")
    verdict = classify_whole(500, None, 4)  # an HTML page or an empty body: no error message
    assert verdict.outcome is Outcome.LOST and "without an error message" in verdict.detail


def test_sse_lines():
    assert parse_sse_line("data: [DONE]") == DONE
    assert parse_sse_line('data: {"a": 1}') == {"a": 1}
    assert parse_sse_line("") is None and parse_sse_line(": keep-alive") is None
    with pytest.raises(ValueError):
        parse_sse_line("data: {broken")


def test_only_the_documented_5xx_pass():
    def err(code: int, message: str) -> Verdict:
        return Verdict(Outcome.ERRORED, code, code, message)

    assert not undocumented_5xx(err(503, "no healthy worker"), DOCUMENTED_5XX)
    assert not undocumented_5xx(Verdict(Outcome.ERRORED, 200, 502, "the worker failed mid-stream"), DOCUMENTED_5XX)
    assert undocumented_5xx(err(500, "Internal Server Error"), DOCUMENTED_5XX)
    assert undocumented_5xx(err(503, "no worker answered after 3 attempts"), DOCUMENTED_5XX)
    assert not undocumented_5xx(err(429, "overloaded"), DOCUMENTED_5XX)


def result(i: int, outcome: Outcome) -> RequestResult:
    return RequestResult(i, "chat", True, 4, 0.0, 1.0, Verdict(outcome, 200))


def test_the_tally_accounts_only_when_every_request_sent_has_an_ok_outcome():
    ok = [result(0, Outcome.COMPLETED), result(1, Outcome.ERRORED), result(2, Outcome.CANCELLED)]
    assert tally(3, ok, DOCUMENTED_5XX).accounted
    assert not tally(4, ok, DOCUMENTED_5XX).accounted  # a request the harness never recorded
    lost = tally(4, [*ok, result(3, Outcome.LOST)], DOCUMENTED_5XX)
    assert not lost.accounted and lost.count(Outcome.LOST) == 1


def test_the_plan_mixes_every_kind_of_request_over_shared_blocks():
    plans, arrivals = plan_requests(SoakConfig(duration_s=30, rate=8))
    kinds = {(p.endpoint, p.stream, p.cancel_after is not None) for p in plans}
    assert kinds == {("chat", True, False), ("chat", True, True), ("chat", False, False),
                     ("completions", True, False), ("completions", True, True), ("completions", False, False)}
    systems = {p.body["messages"][0]["content"] for p in plans if p.endpoint == "chat"}
    assert len(systems) == SoakConfig.shared_blocks
    assert sum(a < 30 for a in arrivals) < len(plans)


# ---------------------------------------------------------------------------- RSS, KV, hold


def test_rss_windows_are_the_first_and_last_quarters_after_warm_up():
    samples = [(0.0, 500.0), *((float(t), 100.0 + t) for t in range(10, 51))]  # warm-up spike, then growth
    assert rss_windows(samples, 10.0) == (120.0, 150.0)
    assert rss_windows([(0.0, 1.0)], 10.0) is None


def fake_cluster(router_pages: int, worker_doc: list[int]):
    """A router's /workers and a worker's /kv_events (a resync of `worker_doc`, page size 4)."""
    batch = KVEventBatch("w0", 7, [PagesStored(ROOT_HASH, chain_hashes(worker_doc, 4), worker_doc)], resync=True)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "router":
            return httpx.Response(200, json=[{"worker_id": "w0", "url": "http://w0", "healthy": True,
                                              "cached_pages": router_pages, "kv_events": {"state": "live"}}])
        assert request.headers["authorization"] == "Bearer k"
        return httpx.Response(200, content=msgspec.json.encode(batch) + b"\n")

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


@pytest.mark.parametrize("router_pages,ok", [(3, True), (5, False), (2, False)])
def test_the_kv_check_passes_only_on_equal_counts(router_pages, ok):
    async def check() -> KVCheck:
        async with fake_cluster(router_pages, list(range(12))) as client:
            return await kv_check(client, "http://router", "w0", "k", settle_s=0.2, poll_s=0.05)

    got = asyncio.run(check())
    assert (got.ok, got.router_pages, got.worker_pages) == (ok, router_pages, 3)


def test_a_hold_waits_for_the_requests_in_flight_and_stops_new_ones():
    async def main() -> list[str]:
        traffic, seen = Traffic(4), []
        await traffic.slot()

        async def finish_later() -> None:
            await asyncio.sleep(0.1)
            seen.append("request ended")
            traffic.release()

        async def hold() -> None:
            async with traffic.hold():
                seen.append("held")
                await asyncio.sleep(0.1)
            seen.append("released")

        async def send() -> None:
            await asyncio.sleep(0.05)
            await traffic.slot()
            seen.append("sent")

        await asyncio.gather(finish_later(), hold(), send())
        return seen

    assert asyncio.run(main()) == ["request ended", "held", "released", "sent"]


def test_a_failed_kv_check_or_a_lost_request_fails_the_report(tmp_path):
    cfg = SoakConfig(duration_s=40)
    kv_bad = [KVCheck("worker-0", False, 9, 0, 10.0)]
    events = [ChaosEvent(5.0, "worker-0", "kill", 1, 2, 5.2, 20.0, kv_bad),
              ChaosEvent(25.0, "worker-1", "stop", 3, None, 27.0, 28.0, [KVCheck("worker-1", True, 4, 4, 0.1)])]
    load = LoadRun(sent=2, results=[result(0, Outcome.COMPLETED), result(1, Outcome.LOST)])
    rss = [(float(t), 100.0) for t in range(41)]
    doc = document(cfg, Observed(load, events, rss, [(0.0, 1.0, 1.0, 1.0)], 0.5, 41.0), startup_s=20.0,
                   revision={"commit": "0" * 40, "dirty": False})
    failed = {c["name"] for c in doc["checks"] if not c["ok"]}
    assert failed == {"accounted", "no_lost", "kv_consistent"} and not doc["passed"]
    md = write(doc, tmp_path / "soak.json").read_text()
    assert "FAILED" in md and "9 != 0" in md
    assert json.loads((tmp_path / "soak.json").read_text())["problems"][0]["index"] == 1


# ---------------------------------------------------------------------------- the soak


def test_a_60_second_soak_passes_every_check(tiny_models, tmp_path):
    doc = run(SoakConfig(duration_s=60.0, model=tiny_models("llama")), log=lambda line: None)
    write(doc, tmp_path / "soak.json")
    checks = {c["name"]: c for c in doc["checks"]}
    assert all(c["ok"] for c in checks.values()), (tmp_path / "soak.md").read_text()
    out = doc["outcomes"]
    assert out["sent"] == out["completed"] + out["errored"] + out["cancelled"] > 0
    assert out["lost"] == out["hung"] == out["undocumented_5xx"] == 0 and out["cancelled"] > 0
    assert {e["action"] for e in doc["chaos"]} == {"kill", "stop"}
    assert all(e["new_pid"] not in (None, e["pid"]) for e in doc["chaos"] if e["action"] == "kill")
    assert all(len(e["kv"]) == 3 and all(k["ok"] for k in e["kv"]) for e in doc["chaos"])
    assert doc["passed"] and doc["rss_mb"]["last_quarter_max"] is not None
