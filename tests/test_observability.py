"""Metrics and logs on a CPU cluster: Prometheus text from router and workers read back with
prometheus-client's parser and checked against the requests sent; one request id in both the
router's and the worker's JSON log lines; every metric documented in the README."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from preble.bench.local_cluster import LocalCluster

WORKER_KEY = "observability-worker-key"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def cluster(tiny_models):
    os.environ["PREBLE_WORKER_API_KEY"] = WORKER_KEY  # `preble serve` then gives its workers this key
    try:
        c = LocalCluster(tiny_models("llama"), 2, "e2", ["--page-size", "4"], startup_timeout_s=120,
                         serve_args=["--log-json"])
    finally:
        del os.environ["PREBLE_WORKER_API_KEY"]
    yield c
    c.stop()


def scrape(url: str, headers=None) -> dict[str, list]:
    """Metric family name -> its samples."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def total(samples: list, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_what_was_sent_and_logs_follow_the_request(cluster):
    ids = []
    for i in range(5):
        body = {"prompt": [5 + i, 6, 7, 8, 9, 10, 11, 12], "max_tokens": 4, "ignore_eos": True, "stream": i >= 3}
        if body["stream"]:
            with httpx.stream("POST", f"{cluster.url}/v1/completions", json=body, timeout=60) as resp:
                assert resp.status_code == 200
                data = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
            assert data[-1] == "[DONE]"
            ids.append(json.loads(data[0])["id"])
        else:
            resp = httpx.post(f"{cluster.url}/v1/completions", json=body, timeout=60)
            assert resp.status_code == 200
            ids.append(resp.json()["id"])

    router = scrape(cluster.url)
    assert total(router["preble_router_requests"], "preble_router_requests_total", status="ok") == 5
    assert total(router["preble_router_ttft_seconds"], "preble_router_ttft_seconds_count") == 5
    assert total(router["preble_router_tpot_seconds"], "preble_router_tpot_seconds_count") == 5
    assert total(router["preble_router_route_branch"], "preble_router_route_branch_total") == 5
    assert total(router["preble_router_prompt_tokens"], "preble_router_prompt_tokens_total") == 5 * 8
    assert total(router["preble_router_inflight_requests"], "preble_router_inflight_requests") == 0
    healthy = {s.labels["worker"]: s.value for s in router["preble_router_worker_healthy"]}
    assert healthy == {"worker-0": 1.0, "worker-1": 1.0}

    workers = httpx.get(f"{cluster.url}/workers", timeout=10).json()
    per_worker = [scrape(w["url"], {"Authorization": f"Bearer {WORKER_KEY}"}) for w in workers]
    assert sum(total(m["preble_worker_requests"], "preble_worker_requests_total", status="ok")
               for m in per_worker) == 5
    assert sum(total(m["preble_worker_output_tokens"], "preble_worker_output_tokens_total")
               for m in per_worker) == 5 * 4
    assert sum(total(m["preble_worker_tpot_seconds"], "preble_worker_tpot_seconds_count")
               for m in per_worker) == 5

    lines = [json.loads(x) for x in cluster.log_tail(1 << 20).splitlines() if x.startswith("{")]
    for rid in ids:
        router_line = [x for x in lines if x["logger"] == "preble.router" and x["msg"] == "request"
                       and x.get("request_id") == rid]
        worker_line = [x for x in lines if x["logger"] == "preble.worker" and x.get("request_id") == rid]
        assert len(router_line) == 1 and router_line[0]["status"] == "ok"
        assert len(worker_line) == 1 and worker_line[0]["worker"] == router_line[0]["worker"]
        assert worker_line[0]["output_tokens"] == router_line[0]["output_tokens"] == 4


def test_every_metric_is_documented(cluster):
    workers = httpx.get(f"{cluster.url}/workers", timeout=10).json()
    names = set(scrape(cluster.url)) | set(scrape(workers[0]["url"], {"Authorization": f"Bearer {WORKER_KEY}"}))
    documented = set(re.findall(r"`(preble_[a-z0-9_]+)`", README.read_text()))
    exported = {n for n in names if n.startswith("preble_") and not n.endswith("_created")}  # creation stamps
    assert exported <= documented
