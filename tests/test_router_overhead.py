"""`preble bench router` on a small cluster: slicing the run and isolating each policy in its own
process change the timings only, never the decisions measured."""

from __future__ import annotations

from preble.bench.router_overhead import run

SMALL = dict(workers=4, prefixes=200, requests=300, policies=("latency", "cache_aware"), warmup=50)


def test_slices_and_processes_time_the_same_decisions():
    whole = run(**SMALL, isolate=False, slices=1)
    sliced = run(**SMALL, isolate=False, slices=3)
    isolated = run(**SMALL, isolate=True, slices=2)
    for name in SMALL["policies"]:
        branches = whole[name]["branches"]
        assert sum(branches.values()) == SMALL["requests"]
        assert sliced[name]["branches"] == branches == isolated[name]["branches"]
        for r in (whole[name], sliced[name], isolated[name]):
            assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_route_ms"]
            assert r["decisions_per_s"] > 0
    assert len(whole["latency"]["branches"]) > 1  # a mix of hits and misses, not one kind
    assert isolated["latency"]["rss_mb"] >= isolated["latency"]["rss_after_build_mb"] > 0
