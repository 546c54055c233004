"""`preble bench routers`: the pure parts, the worker endpoints peer routers rely on, and (slow,
when sglang-router / vllm-router are installed) a comparison run end to end on a tiny model."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, replace

import httpx
import pytest

from preble.bench.peer_routers import WorkerPool, markdown, prepare_requests, router_command, run
from preble.bench.peer_routers_config import (
    DEFAULT_ROUTERS,
    Climb,
    PeerBenchConfig,
    RouterSpec,
    WorkloadRun,
    core_plan,
    select_workloads,
)
from preble.bench.workloads.report import PREBLE_WORKLOADS

WORKERS = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]


def test_router_specs_parse_and_reject_unknown_kinds():
    assert RouterSpec.parse(" sglang:cache_aware ") == RouterSpec("sglang", "cache_aware")
    assert RouterSpec.parse("preble:e2").name == "preble:e2"
    assert all(RouterSpec.parse(r) for r in DEFAULT_ROUTERS)
    for bad in ("e2", "nginx:round_robin", "vllm:"):
        with pytest.raises(ValueError):
            RouterSpec.parse(bad)


def test_the_preset_covers_the_five_workloads_and_takes_overrides():
    assert tuple(w.name for w in select_workloads(PREBLE_WORKLOADS)) == PREBLE_WORKLOADS
    chosen = select_workloads(["loogle", "toolbench"], [(None, "max_tokens", 4), ("loogle", "max_tokens_cap", 8)],
                              rate=2.0, num_requests=10)
    assert [w.name for w in chosen] == ["loogle", "toolbench"]
    assert all(w.rate == 2.0 and w.num_requests == 10 for w in chosen)
    assert chosen[0].params["max_tokens_cap"] == 8 and "max_tokens_cap" not in chosen[1].params
    assert chosen[1].params["max_tokens"] == 4
    scaled = select_workloads(["agent"], rate_scale=1.5)[0]
    preset = select_workloads(["agent"])[0]
    assert scaled.rate == pytest.approx(1.5 * preset.rate) and scaled.num_requests == round(1.5 * preset.num_requests)
    with pytest.raises(KeyError, match="nope"):
        select_workloads(["nope"])


def test_router_commands_bind_loopback_and_name_every_worker():
    preble = router_command(RouterSpec("preble", "e2"), None, "/m", WORKERS, 8000, 8001)
    assert preble[1:4] == ["-m", "preble.cli", "router"] and preble.count("--worker") == 2
    assert preble[preble.index("--policy") + 1] == "e2" and preble[preble.index("--host") + 1] == "127.0.0.1"
    assert "--health-timeout" not in preble
    tuned = router_command(RouterSpec("preble", "e2"), None, "/m", WORKERS, 8000, 8001, "cm.json", 5.0)
    assert tuned[-4:] == ["--cost-model", "cm.json", "--health-timeout", "5.0"]
    sglang = router_command(RouterSpec("sglang", "cache_aware"), "/bin/sglang-router", "/m", WORKERS, 8000, 8001)
    assert sglang[:2] == ["/bin/sglang-router", "launch"]
    i = sglang.index("--worker-urls")
    assert sglang[i + 1:i + 3] == WORKERS and sglang[sglang.index("--prometheus-port") + 1] == "8001"
    vllm = router_command(RouterSpec("vllm", "round_robin"), "/bin/vllm-router", "/m", WORKERS, 8000, 8001)
    assert vllm[1] == "--host" and vllm[vllm.index("--policy") + 1] == "round_robin"
    with pytest.raises(ValueError):
        router_command(RouterSpec("vllm", "round_robin"), None, "/m", WORKERS, 8000, 8001)


def test_router_executables_come_from_the_option_the_environment_or_path(tmp_path, monkeypatch):
    exe = tmp_path / "my-router"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("PREBLE_VLLM_ROUTER", raising=False)
    assert PeerBenchConfig().executable("vllm") is None
    assert PeerBenchConfig(vllm_router=str(exe)).executable("vllm") == str(exe)
    monkeypatch.setenv("PREBLE_VLLM_ROUTER", str(exe))
    assert PeerBenchConfig().executable("vllm") == str(exe)
    assert PeerBenchConfig(vllm_router=str(tmp_path / "missing")).executable("vllm") is None


def test_the_command_builds_its_config_from_the_options(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import preble.bench.peer_routers as peer_routers
    from preble.cli import app

    seen = {}

    def fake_run(cfg, **_):
        seen["cfg"] = cfg
        return {"date": "d", "commit": "c", "device": {"kind": "cpu", "cpu": "x", "cores": 1, "torch": "t"},
                "model": {"path": "/m", "served_name": "m"}, "config": asdict(cfg), "routers": {}, "runs": []}

    monkeypatch.setattr(peer_routers, "run", fake_run)
    result = CliRunner().invoke(app, ["bench", "routers", "--workloads", "agent,loogle", "--routers",
                                      "preble:e2,vllm:round_robin", "--param", "loogle:max_tokens_cap=4",
                                      "--param", "agent:max_tokens_cap=2", "--rate-scale", "2", "--prefix-cap", "0",
                                      "--workers", "2", "--device", "cuda", "--load-format", "dummy",
                                      "--repeats", "3", "--pin-cores", "--router-cores", "2", "--climb",
                                      "preble:round_robin", "--climb-requests", "50", "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.routers == ("preble:e2", "vllm:round_robin") and cfg.workers == 2 and cfg.prefix_cap is None
    assert cfg.max_output_tokens == PeerBenchConfig.max_output_tokens
    assert (cfg.device, cfg.load_format, cfg.repeats, cfg.pin_cores, cfg.router_cores) == ("cuda", "dummy", 3, True, 2)
    assert cfg.climb == Climb("preble:round_robin", requests=50)
    bad = CliRunner().invoke(app, ["bench", "routers", "--climb", "round_robin"])
    assert bad.exit_code == 2 and "--climb" in bad.output
    agent, loogle = cfg.workloads
    assert agent.params["max_tokens_cap"] == 2 and loogle.params["max_tokens_cap"] == 4
    assert loogle.rate == pytest.approx(2 * select_workloads(["loogle"])[0].rate)
    assert (tmp_path / "r.md").read_text().startswith("# Routers in front of the same Preble workers")


class WordTokenizer:
    """Token i is the word `wi`."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [int(w[1:]) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text)}


def test_prompts_keep_the_capped_shared_prefix_and_their_own_suffix():
    wl = WorkloadRun("shared_prefix", 1.0, 6, dict(groups=2, system_len=40, question_len=5, output_len=50,
                                                   vocab_size=1000))
    reqs = prepare_requests(wl, WordTokenizer(), PeerBenchConfig(prefix_cap=16, max_output_tokens=32))
    ids = [WordTokenizer().encode(r.prompt) for r in reqs]
    assert all(len(x) == 16 + 5 for x in ids) and all(r.max_tokens == 32 for r in reqs)
    assert len({tuple(x[:16]) for x in ids}) == 2 and len({tuple(x[16:]) for x in ids}) == 6
    full = prepare_requests(wl, WordTokenizer(), PeerBenchConfig(prefix_cap=None, max_output_tokens=None))
    assert all(len(WordTokenizer().encode(r.prompt)) == 45 and r.max_tokens == 50 for r in full)


def _summary(latency: float, hit: float) -> dict:
    return {"requests": 4, "mean_latency": latency, "p50_latency": latency, "p99_latency": 2 * latency,
            "mean_ttft": latency / 4, "p99_ttft": latency / 2, "mean_tpot": math.nan, "throughput": 0.5,
            "hit_ratio": hit, "errors": 0}


def test_markdown_has_a_table_per_workload_and_a_row_per_router():
    doc = {"date": "2026-01-01T00:00:00+00:00", "commit": "abc",
           "device": {"kind": "cpu", "cpu": "Test CPU", "cores": 2, "torch": "2.x"},
           "model": {"path": "/models/tiny", "served_name": "tiny"},
           "config": {"workers": 2, "num_pages": 64, "page_size": 16, "max_num_batched_tokens": 512,
                      "prefix_cap": 1024, "max_output_tokens": 32, "seed": 0},
           "routers": {"preble:e2": {"version": "preble 0.1.0"}, "vllm:cache_aware": {"skipped": "not found"},
                       "sglang:cache_aware": {"version": "sglang-router 0.3.2"}},
           "runs": [
               {"workload": "loogle", "router": "preble:e2", "rate": 0.5, "num_requests": 4, "params": {"a": 1},
                "summary": _summary(1.5, 0.9), "worker_requests": {"worker-0": 3, "worker-1": 1}},
               {"workload": "loogle", "router": "sglang:cache_aware", "rate": 0.5, "num_requests": 4, "params": {"a": 1},
                "failed": "router did not start"},
               {"workload": "agent", "router": "preble:e2", "rate": 1.0, "num_requests": 4, "params": {},
                "summary": _summary(3.0, 0.25), "worker_requests": {"worker-0": 2, "worker-1": 2}}]}
    text = markdown(doc)
    assert "Test CPU, 2 cores" in text and "commit abc" in text and "vllm:cache_aware: skipped (not found)" in text
    assert "## loogle: 4 requests, Poisson 0.5/s (a=1)" in text and "## agent: 4 requests, Poisson 1/s" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| preble:e2")]
    assert rows[0].split(" | ")[1:5] == ["4/4", "1.50", "1.50", "3.00"]
    assert "| 90.0% | 0 | 3/1 |" in rows[0] and "| - |" in rows[0]
    assert "| sglang:cache_aware | failed: router did not start |" in text
    header = next(ln for ln in text.splitlines() if ln.startswith("| router"))
    assert all(ln.count("|") == header.count("|") for ln in text.splitlines() if ln.startswith("| "))


def test_markdown_gives_the_knee_and_each_router_over_its_repeats():
    run_ = {"workload": "agent", "rate": 6.0, "num_requests": 4, "params": {}, "worker_requests": {"worker-0": 4}}
    doc = {"date": "d", "commit": "abc", "device": {"kind": "cpu", "cpu": "C", "cores": 16, "torch": "2.x",
                                                    "gpu": "NVIDIA H200"},
           "model": {"path": "/m/tiny", "served_name": "tiny"},
           "config": {"workers": 4, "num_pages": 64, "page_size": 16, "max_num_batched_tokens": 512, "prefix_cap": None,
                      "max_output_tokens": None, "seed": 0, "repeats": 2, "device": "cuda", "pin_cores": True,
                      "worker_threads": 3},
           "routers": {"preble:latency": {"version": "preble 0.1.0"}, "vllm:cache_aware": {"version": "v"}},
           "knees": {"agent": {"router": "preble:round_robin", "knee": 6.0, "reached": True,
                               "rungs": [{"rate": 4.0, "p99_latency": 1.0}, {"rate": 6.0, "p99_latency": 6.5}]}},
           "runs": [{**run_, "router": "preble:latency", "repeat": 0, "summary": _summary(1.0, 0.5)},
                    {**run_, "router": "vllm:cache_aware", "repeat": 0, "summary": _summary(2.0, 0.5)},
                    {**run_, "router": "preble:latency", "repeat": 1, "summary": _summary(3.0, 0.5)},
                    {**run_, "router": "vllm:cache_aware", "repeat": 1, "failed": "router did not start"}]}
    text = markdown(doc)
    assert "workers on cuda (NVIDIA H200)" in text and "each pinned to 3 cores of its own" in text
    assert "preble:round_robin's knee, 6/s; p99 latency by rung: 4/s: 1.00 s, 6/s: 6.50 s." in text
    assert "| preble:latency | 2 | 2.00 (1.00-3.00) | 4.00 (2.00-6.00) | 8 | 0 |" in text
    assert "| vllm:cache_aware | 1 | 2.00 (2.00-2.00) | 4.00 (4.00-4.00) | 4 | 0 |" in text
    assert "| preble:latency #2 | 4/4 | 3.00 |" in text and "| vllm:cache_aware #2 | failed: router did not start |" in text


def _one_workload_doc(workload: str, date: str, routers: dict | None = None) -> dict:
    return {"date": date, "commit": "abc", "dirty": False, "complete": True, "wall_s": 10.0,
            "device": {"kind": "cpu", "cpu": "C", "cores": 16, "torch": "2.x", "gpu": "NVIDIA H100"},
            "model": {"path": "/m/tiny", "served_name": "tiny"},
            "config": {"workers": 4, "num_pages": 64, "page_size": 16, "max_num_batched_tokens": 512, "prefix_cap": None,
                       "max_output_tokens": None, "seed": 0, "repeats": 1, "workloads": [{"name": workload}]},
            "routers": routers or {"preble:latency": {"version": "preble 0.1.0"}},
            "knees": {workload: {"router": "preble:round_robin", "knee": 6.0, "reached": True,
                                 "rungs": [{"rate": 6.0, "p99_latency": 1.0}]}},
            "runs": [{"workload": workload, "rate": 6.0, "num_requests": 4, "params": {}, "router": "preble:latency",
                      "repeat": 0, "summary": _summary(1.0, 0.5), "worker_requests": {"worker-0": 4}}]}


def test_files_of_one_workload_each_merge_and_others_are_refused(tmp_path):
    from typer.testing import CliRunner

    from preble.bench.peer_routers import merge
    from preble.cli import app

    a, b = _one_workload_doc("toolbench", "2026-01-01"), {**_one_workload_doc("loogle", "2026-01-02"), "complete": False}
    doc = merge([a, b])
    assert [r["workload"] for r in doc["runs"]] == ["toolbench", "loogle"] and set(doc["knees"]) == {"toolbench", "loogle"}
    assert [w["name"] for w in doc["config"]["workloads"]] == ["toolbench", "loogle"]
    assert doc["date"] == "2026-01-02" and doc["wall_s"] == 20.0 and not doc["complete"]
    assert [m["workloads"] for m in doc["merged_from"]] == [["toolbench"], ["loogle"]]
    text = markdown(doc)
    assert "## toolbench" in text and "## loogle" in text and "Merged from 2 files" in text
    for other, why in ((_one_workload_doc("toolbench", "d"), "more than one file"),
                       ({**_one_workload_doc("loogle", "d"), "commit": "def"}, "differ in commit"),
                       ({**b, "config": {**b["config"], "workers": 2}}, "different configurations"),
                       ({**b, "device": {**b["device"], "gpu": "NVIDIA H200"}}, "different kinds of machine"),
                       (_one_workload_doc("loogle", "d", {"preble:latency": {"version": "preble 0.2.0"}}), "differs")):
        with pytest.raises(ValueError, match=why):
            merge([a, other])
    paths = []
    for i, d in enumerate((a, b)):
        paths += ["--merge", str(tmp_path / f"{i}.json")]
        (tmp_path / f"{i}.json").write_text(json.dumps(d))
    result = CliRunner().invoke(app, ["bench", "routers", *paths, "--out", str(tmp_path / "all.json")])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "all.json").read_text())
    assert [(r["workload"], r["summary"]["mean_latency"]) for r in written["runs"]] == [("toolbench", 1.0), ("loogle", 1.0)]
    (tmp_path / "0.json").write_text(json.dumps({**a, "commit": "zzz"}))
    bad = CliRunner().invoke(app, ["bench", "routers", *paths, "--out", str(tmp_path / "all.json")])
    assert bad.exit_code != 0 and "cannot merge" in bad.output


def test_pinned_workers_take_blocks_of_their_own_and_leave_the_rest_to_the_routers():
    plan = core_plan([7, 0, 1, 2, 3, 4, 5, 6], workers=3, threads=2)
    assert plan.workers == (frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5})) and plan.rest == {6, 7}
    with pytest.raises(ValueError, match="leave none"):
        core_plan(range(8), workers=4, threads=2)
    cores = len(os.sched_getaffinity(0))
    cfg = PeerBenchConfig(workers=1, pin_cores=True, router_cores=1)
    assert cfg.threads() == cores - 1 and cfg.core_plan().rest == {max(os.sched_getaffinity(0))}
    assert PeerBenchConfig(workers=1).core_plan() is None and PeerBenchConfig(workers=1).threads() == cores
    gpu = PeerBenchConfig(device="cuda", load_format="dummy").worker_args()
    assert gpu[gpu.index("--device") + 1] == "cuda" and gpu[gpu.index("--load-format") + 1] == "dummy"


def test_a_pinned_child_and_its_children_run_on_its_cores_only(tmp_path):
    from preble.processes import ChildProcess

    core = min(os.sched_getaffinity(0))
    code = ("import os, subprocess, sys; print(sorted(os.sched_getaffinity(0))); sys.stdout.flush(); "
            "subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'])")
    child = ChildProcess("pinned", [sys.executable, "-c", code], log_path=tmp_path / "pinned.log", cpus={core})
    assert child.wait_or_kill(30) == 0
    assert (tmp_path / "pinned.log").read_text().split() == [f"[{core}]", f"[{core}]"]


def test_the_knee_is_the_first_rung_past_the_factor_and_the_ladder_stops_there(monkeypatch, tmp_path):
    import preble.bench.peer_routers as peer_routers

    def p99_at(rate: float) -> float:  # a queue that blows up past 8 requests/s
        return 1.0 if rate < 8 else 10.0

    seen = []

    def fake_run_one(spec, executable, pool, model, reqs, rate, seed, cfg, log_path, on_done):
        seen.append((spec.name, rate, len(reqs)))
        return {"summary": {"p99_latency": p99_at(rate), "mean_latency": p99_at(rate) / 2, "errors": 0}}

    monkeypatch.setattr(peer_routers, "_run_one", fake_run_one)
    wl = WorkloadRun("toolbench", 2.0, 50)
    climb = Climb("preble:round_robin", requests=10, step=2.0, max_rungs=6, factor=5.0)
    knee = peer_routers.find_knee(climb, None, None, "/m", list(range(50)), wl, PeerBenchConfig(), tmp_path)
    assert [r["rate"] for r in knee["rungs"]] == [2.0, 4.0, 8.0] and knee["knee"] == 8.0 and knee["reached"]
    assert seen == [("preble:round_robin", r, 10) for r in (2.0, 4.0, 8.0)]
    flat = peer_routers.find_knee(replace(climb, max_rungs=2), None, None, "/m", list(range(50)),
                                  replace(wl, rate=0.5), PeerBenchConfig(), tmp_path)
    assert flat["knee"] == 1.0 and not flat["reached"]


def test_a_worker_takes_routers_extra_fields_and_flushes_its_cache(tiny_models, tmp_path):
    pool = WorkerPool(tiny_models("llama"), PeerBenchConfig(workers=1, page_size=4, num_pages=256), tmp_path)
    try:
        url = pool.urls[0]
        info = httpx.get(f"{url}/server_info").json()
        assert info["served_model_name"] == pool.model_name and info["model_path"]
        assert httpx.get(f"{url}/model_info").status_code == 200
        body = {"model": pool.model_name, "prompt": list(range(5, 37)), "max_tokens": 2, "temperature": 0,
                "no_stop_trim": False, "return_hidden_states": False, "echo": False}

        def cached() -> int:
            resp = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
            assert resp.status_code == 200, resp.text
            return resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

        cached()
        assert cached() > 0
        assert httpx.post(f"{url}/flush_cache").json()["status"] == "ok"  # no body, no Content-Length
        assert cached() == 0
        assert httpx.post(f"{url}/v1/completions", json={**body, "no_stop_trim": True}).status_code == 400
        assert pool.requests_served() == {"worker-0": 3}
    finally:
        pool.stop()


def test_repeats_climb_and_pinning_end_to_end(tiny_models, tmp_path):
    wl = WorkloadRun("shared_prefix", 4.0, 8, dict(groups=2, system_len=96, question_len=8, output_len=4))
    cfg = PeerBenchConfig(model=tiny_models("llama"), workers=1, routers=("preble:round_robin", "preble:latency"),
                          workloads=(wl,), page_size=4, num_pages=256, worker_threads=1, repeats=2,
                          pin_cores=len(os.sched_getaffinity(0)) > 1, router_cores=1,
                          climb=Climb("preble:round_robin", requests=4, max_rungs=2))
    partial = []
    doc = run(cfg, log=lambda _: None, checkpoint=partial.append)
    json.dumps(doc)
    assert [len(p["runs"]) for p in partial] == [2, 4] and not any(p["complete"] for p in partial)
    assert doc["complete"] and "Cut short" in markdown(partial[0]) and "Cut short" not in markdown(doc)
    knee = doc["knees"]["shared_prefix"]
    assert [r["rate"] for r in knee["rungs"]] == [4.0, 6.0] and knee["knee"] in (4.0, 6.0)
    assert [(r["router"], r["repeat"], r["arrival_seed"]) for r in doc["runs"]] == [
        ("preble:round_robin", 0, 0), ("preble:latency", 0, 0), ("preble:round_robin", 1, 1), ("preble:latency", 1, 1)]
    for r in doc["runs"]:
        assert "failed" not in r, r
        assert r["rate"] == knee["knee"] and r["summary"]["requests"] == 8 and r["summary"]["errors"] == 0
        assert sum(r["worker_requests"].values()) == 8
    assert doc["config"]["worker_threads"] == 1 and os.sched_getaffinity(0) == set(cfg.cores())
    text = markdown(doc)
    assert "Over 2 repeats" in text and "| preble:latency #2 |" in text and "round_robin's" in text


def _peer_executables() -> dict[str, str]:
    cfg = PeerBenchConfig()
    return {k: exe for k in ("sglang", "vllm") if (exe := cfg.executable(k))}


@pytest.mark.slow
@pytest.mark.skipif(not _peer_executables(), reason="neither sglang-router nor vllm-router is installed "
                    "(PATH, $PREBLE_SGLANG_ROUTER, $PREBLE_VLLM_ROUTER)")
def test_peer_routers_and_preble_serve_the_same_workload(tiny_models, tmp_path):
    peers = [f"{kind}:{policy}" for kind in _peer_executables() for policy in ("cache_aware", "round_robin")]
    wl = WorkloadRun("shared_prefix", 4.0, 12, dict(groups=2, system_len=96, question_len=8, output_len=4))
    cfg = PeerBenchConfig(model=tiny_models("llama"), workers=2, routers=("preble:e2", *peers), workloads=(wl,),
                          page_size=4, num_pages=256, worker_threads=1)
    doc = run(cfg, log=lambda _: None)
    json.dumps(doc)
    assert [r["router"] for r in doc["runs"]] == ["preble:e2", *peers]
    for r in doc["runs"]:
        assert "failed" not in r, r
        s = r["summary"]
        assert s["requests"] == 12 and s["errors"] == 0 and s["output_tokens"] == 12 * 4
        assert sum(r["worker_requests"].values()) == 12
        assert s["hit_ratio"] > 0.3  # every run starts cold, and the two prefixes are reused
    assert all(doc["routers"][p]["version"] != "unknown" for p in peers)
    assert os.path.basename(doc["model"]["path"]) == doc["model"]["served_name"]
