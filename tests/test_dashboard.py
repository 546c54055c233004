"""The operator dashboard: its data (checked by brute force), its JSON endpoints on a CPU
cluster (shape, bounds, API key), and the page in headless Chromium under load."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from preble.bench.local_cluster import LocalCluster
from preble.core.global_tree import REQUESTS, GlobalTree
from preble.router.config import DashboardConfig
from preble.router.dashboard import Timeline, preview

from .clocks import ManualClock

KEY = "dash-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")



# ---------------------------------------------------------------------------- data


def test_timeline_rates_hit_ratio_and_percentiles_per_bucket():
    clock = ManualClock(1000.0)
    cfg = DashboardConfig(bucket_s=5.0, span_s=20.0)
    tl = Timeline(cfg, clock)
    ttfts = [0.01 * (i + 1) for i in range(100)]
    for i, t in enumerate(ttfts):
        tl.record(t, 100, 40 if i % 2 else 80, ok=True)
    tl.record(9.0, 100, 0, ok=False)
    clock.t += 2.5  # the bucket started at 1000, half-way through it
    [b] = tl.series()
    assert b["t"] == 1000.0 and b["errors"] == 1
    assert b["requests_per_s"] == pytest.approx(101 / 2.5)
    assert b["hit_ratio"] == pytest.approx((50 * 40 + 50 * 80) / (100 * 100))
    assert [b["p50_ttft"], b["p99_ttft"]] == pytest.approx(list(np.percentile(ttfts, [50, 99])))
    clock.t += 10.0
    tl.record(0.2, 10, 10, ok=True)
    assert [round(x["t"]) for x in tl.series()] == [1000, 1010]
    assert tl.series()[-1]["requests_per_s"] == pytest.approx(1 / 2.5)
    clock.t += 30.0  # past the span: the old buckets are gone
    assert tl.series() == []


def test_timeline_keeps_a_bounded_uniform_sample_of_ttfts():
    clock = ManualClock(1000.0)
    tl = Timeline(DashboardConfig(samples_per_bucket=100), clock)
    for i in range(10_000):
        tl.record(i / 10_000, 1, 0, ok=True)
    [b] = tl.series()
    assert len(tl._buckets[0].ttfts) == 100
    assert 0.35 < b["p50_ttft"] < 0.65  # a uniform sample's median of a uniform ramp


def brute_hottest(tree: GlobalTree) -> list[tuple[int, float]]:
    """Every prefix with >= 2 requests none of whose children carries all of them."""
    out, stack = [], list(tree.root.children.values())
    while stack:
        node = stack.pop()
        stack.extend(node.children.values())
        n = sum(tree.stats(node, w)[REQUESTS] for w in (node.stats or {}))
        kids = [sum(tree.stats(c, w)[REQUESTS] for w in (c.stats or {})) for c in node.children.values()]
        if n >= 2 and not any(k >= n for k in kids):
            out.append((node.end, n))
    return sorted(out, key=lambda x: -x[1])


def test_hottest_prefixes_match_brute_force():
    clock = ManualClock(1000.0)
    tree = GlobalTree(4, clock)
    system = list(range(1, 33))
    uses = {0: 9, 1: 5, 2: 3, 3: 1}  # tool -> requests; each request adds a unique question
    q = 1000
    for tool, n in uses.items():
        doc = [500 + 10 * tool + i for i in range(8)]
        for _ in range(n):
            path = tree.insert(tree.match(system + doc + [q, q + 1, q + 2, q + 3]))
            tree.record(path[-1], "w0" if tool % 2 else "w1", (1.0, 0.1, 5.0))
            q += 4
    expected = brute_hottest(tree)
    assert expected[0] == (32, 18) and (40, 9) in expected and (40, 1) not in expected
    got = [(node.end, n) for node, n in tree.hottest(limit=10)]
    assert got == expected
    assert [(node.end, n) for node, n in tree.hottest(limit=2)] == expected[:2]
    assert tree.path_tokens(tree.hottest(limit=1)[0][0]) == system


def test_preview_shows_both_ends_unless_full_text_is_on():
    decode = lambda ids: " ".join(map(str, ids))  # noqa: E731
    tokens = list(range(40))
    short = preview(tokens, decode, DashboardConfig(preview_tokens=3))
    assert short == "0 1 2 … 37 38 39"
    assert preview(tokens, decode, DashboardConfig(preview_tokens=3, full_text=True)) == decode(tokens)
    assert preview(tokens[:6], decode, DashboardConfig(preview_tokens=3)) == decode(tokens[:6])


# ---------------------------------------------------------------------------- endpoints


@pytest.fixture(scope="module")
def cluster(tiny_models):
    c = LocalCluster(tiny_models("llama"), 2, "e2", ["--page-size", "4"], startup_timeout_s=120,
                     serve_args=["--api-key", KEY])
    yield c
    c.stop()


SHARED = [(7 * j) % 400 + 3 for j in range(64)]


def send(cluster: LocalCluster, i: int) -> httpx.Response:
    resp = httpx.post(f"{cluster.url}/v1/completions", headers=AUTH, timeout=60,
                      json={"prompt": SHARED + [i % 300 + 5, 3, 4, 5], "max_tokens": 3})
    assert resp.status_code == 200
    return resp


def test_dashboard_endpoints_shape_bounds_and_key(cluster):
    for i in range(6):
        last = send(cluster, i)
    api = f"{cluster.url}/dashboard/api"
    for path in ("replicas", "prefixes", "decisions", "timeline"):
        assert httpx.get(f"{api}/{path}").status_code == 401
    assert httpx.get(f"{cluster.url}/dashboard").status_code == 200  # the page itself holds no data

    rep = httpx.get(f"{api}/replicas", headers=AUTH).json()
    assert rep["policy"] == "e2"
    assert {r["worker_id"] for r in rep["replicas"]} == {"worker-0", "worker-1"}
    assert set(rep["replicas"][0]) >= {"healthy", "running", "waiting", "kv_usage", "hit_ratio", "load_s",
                                       "tpot", "cached_pages"}

    pre = httpx.get(f"{api}/prefixes", params={"limit": 10 ** 6}, headers=AUTH).json()
    assert len(pre["prefixes"]) <= DashboardConfig.max_prefixes and not pre["full_text"]
    top = pre["prefixes"][0]
    assert top["tokens"] == len(SHARED) and top["requests_in_window"] >= 6
    assert top["held_by"] == [json.loads(last.headers["x-preble-route"])["worker"]]
    assert "…" in top["preview"] and len(top["preview"]) < 200

    dec = httpx.get(f"{api}/decisions", params={"limit": 10 ** 6}, headers=AUTH).json()["decisions"]
    assert len(dec) <= DashboardConfig.max_decisions
    assert dec[0]["request_id"] == last.json()["id"] and dec[0]["branch"] in ("exploit", "explore")

    series = httpx.get(f"{api}/timeline", headers=AUTH).json()["series"]
    assert series and sum(b["requests_per_s"] for b in series) > 0


# ---------------------------------------------------------------------------- the page


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian's chromium package)")
def test_page_under_load_shows_replicas_prefix_placement_and_decisions(cluster):
    sync_api = pytest.importorskip("playwright.sync_api")
    stop = threading.Event()

    def load() -> None:
        i = 100
        while not stop.is_set():
            send(cluster, i)
            i += 1

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.add_init_script(f"sessionStorage.setItem('preble-api-key', '{KEY}')")
            page.goto(f"{cluster.url}/dashboard")
            page.wait_for_selector("#replicas tr[data-replica='worker-1']")
            assert page.locator("#replicas tbody tr").count() == 2
            # The shared prefix shows as held by the replica e2 sent it to.
            chosen = json.loads(send(cluster, 1).headers["x-preble-route"])["worker"]
            page.wait_for_selector(f"#prefixes tr[data-holders='{chosen}']", timeout=10_000)
            # A request just sent appears among the decisions.
            rid = send(cluster, 2).json()["id"]
            page.wait_for_selector(f"#decisions tr[data-request='{rid}']", timeout=10_000)
            page.wait_for_timeout(1500)  # a refresh or two with the charts filled
            shot = os.environ.get("PREBLE_DASHBOARD_SCREENSHOT")
            if shot:
                page.screenshot(path=str(Path(shot)), full_page=True)
            browser.close()
        assert errors == []
    finally:
        stop.set()
        loader.join(timeout=60)
