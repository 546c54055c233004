"""Reliability on a CPU cluster of tiny-model workers: a worker killed mid-run, overload, bad
input (fuzzed), API keys, client disconnects and a graceful drain on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preble.bench.local_cluster import LocalCluster
from preble.router.config import RouterServerConfig, WorkerPoolConfig

from .sse import sse_events

STARTUP_TIMEOUT_S = 120
# `preble serve` starts its router with these defaults: a worker silent for the health timeout
# is marked down at its next health check.
DETECTION_BOUND_S = RouterServerConfig.health_timeout_s + WorkerPoolConfig.load_interval_s
LONG_ANSWER = 400  # output tokens of a request still running when its worker is killed (context 512)
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def worker_pid(cluster: LocalCluster, index: int) -> int:
    """The pid of `preble worker` number `index` (not its engine process) under the cluster."""
    for child in psutil.Process(cluster.proc.pid).children(recursive=True):
        cmd = child.cmdline()
        if "worker" in cmd and f"worker-{index}" in cmd:
            return child.pid
    raise LookupError(f"worker-{index} is not running")


def workers_view(cluster: LocalCluster, headers=None) -> dict[str, dict]:
    return {w["worker_id"]: w for w in httpx.get(f"{cluster.url}/workers", headers=headers, timeout=10).json()}


def wait_for(predicate, timeout_s: float, step_s: float = 0.05) -> float:
    """Seconds until `predicate()` held; fails the test after `timeout_s`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(step_s)
    return time.monotonic() - start


def ask(url: str, body: dict, headers=None) -> dict:
    """One request, streamed or not; what came back, summarised."""
    with httpx.Client(timeout=120, headers=headers) as client:
        if not body.get("stream"):
            resp = client.post(f"{url}/v1/completions", json=body)
            return {"status": resp.status_code, "body": resp.json(), "route": resp.headers.get("x-preble-route")}
        with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                return {"status": resp.status_code, "body": resp.json()}
            events = sse_events(resp)
            return {"status": 200, "events": events, "route": resp.headers.get("x-preble-route")}


def finished(result: dict) -> bool:
    """A complete answer: every choice has a finish reason (and a stream ends with [DONE])."""
    if result["status"] != 200:
        return False
    if "body" in result:
        return all(c["finish_reason"] for c in result["body"]["choices"])
    events = result["events"]
    return events[-1] == "[DONE]" and any(
        c.get("finish_reason") for e in events[:-1] if isinstance(e, dict) for c in e.get("choices", ()))


def errored(result: dict) -> bool:
    """An explicit error: an OpenAI error body, or a stream ending in an error event and [DONE]."""
    if "events" in result:
        events = result["events"]
        return events[-1] == "[DONE]" and any(isinstance(e, dict) and "error" in e for e in events)
    return result["status"] >= 400 and "message" in result["body"].get("error", {})


# ---------------------------------------------------------------------------- worker failure


def test_a_killed_worker_loses_no_request(tiny_models):
    with LocalCluster(tiny_models("llama"), 3, "e2", ["--page-size", "4"],
                      startup_timeout_s=STARTUP_TIMEOUT_S) as cluster:
        def body(i: int, stream: bool, max_tokens: int = 40) -> dict:
            prompt = [(37 * i + 11 * j) % 500 + 3 for j in range(20)]
            return {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": stream}

        # Distinct prompts: e2 explores, so every worker serves some and caches them.
        warm = [ask(cluster.url, body(i, False)) for i in range(9)]
        assert all(finished(r) for r in warm)
        assert workers_view(cluster)["worker-1"]["cached_pages"] > 0
        victim = worker_pid(cluster, 1)
        engine = psutil.Process(victim).children()  # its engine process
        assert engine

        with ThreadPoolExecutor(32) as pool:
            # Long enough to be running when the worker dies (40 tokens took ~45 ms: all could end
            # before the kill), so whole answers on it must be retried elsewhere.
            before = [pool.submit(ask, cluster.url, body(100 + i, i % 2 == 0, LONG_ANSWER)) for i in range(16)]
            wait_for(lambda: (workers_view(cluster)["worker-1"]["load"] or {}).get("running", 0) > 0, 10.0, step_s=0.01)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            after = [pool.submit(ask, cluster.url, body(200 + i, i % 2 == 0)) for i in range(16)]
            # The router stops routing to it and drops its tree entries within its health
            # timeout plus one health check (the last answer came at most one interval before
            # the kill), measured from the kill to the moment /workers first says it is down.
            wait_for(lambda: not workers_view(cluster)["worker-1"]["healthy"], 10.0, step_s=0.01)
            noticed_after = time.monotonic() - killed_at
            assert noticed_after < DETECTION_BOUND_S, (noticed_after, DETECTION_BOUND_S)
            assert workers_view(cluster)["worker-1"]["cached_pages"] == 0
            before = [f.result(timeout=120) for f in before]
            after = [f.result(timeout=120) for f in after]

        # Every request got a complete answer or an explicit error; none that had not started
        # streaming failed: whole answers and requests sent after the kill all completed.
        assert all(finished(r) or errored(r) for r in before + after)
        assert all(finished(r) for r in before if "body" in r)
        assert all(finished(r) for r in after)
        # Its engine process notices and exits: no orphan holds the model's memory.
        gone, alive = psutil.wait_procs(engine, timeout=10)
        assert not alive
        metrics = httpx.get(f"{cluster.url}/metrics").text
        assert any(line.startswith("preble_router_retries_total") and float(line.split()[-1]) > 0
                   for line in metrics.splitlines())

        # `preble serve` restarts it; the router re-admits it and routes to it again.
        wait_for(lambda: workers_view(cluster)["worker-1"]["healthy"], 90.0, 0.5)
        assert worker_pid(cluster, 1) != victim
        routed = []
        for i in range(30):
            r = ask(cluster.url, body(300 + i, False))
            assert finished(r)
            routed.append(json.loads(r["route"])["worker"])
            if routed[-1] == "worker-1":
                break
        assert routed[-1] == "worker-1", routed


def test_a_hung_worker_is_routed_around_and_its_requests_end(tiny_models):
    """SIGSTOP: the worker's connections stay open but nothing comes back. The health check
    notices within 2 s, which cuts the requests waiting on it: whole answers are retried on the
    other worker, streams end with an error event. SIGCONT: it is re-admitted."""
    with LocalCluster(tiny_models("llama"), 2, "round_robin", ["--page-size", "4"],
                      startup_timeout_s=STARTUP_TIMEOUT_S) as cluster:
        hung = psutil.Process(worker_pid(cluster, 1))
        body = {"prompt": [4, 5, 6, 7], "max_tokens": 60, "ignore_eos": True, "temperature": 0}
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(ask, cluster.url, {**body, "stream": i % 2 == 0}) for i in range(16)]
            time.sleep(0.3)
            hung.suspend()
            stopped_at = time.monotonic()
            try:
                wait_for(lambda: not workers_view(cluster)["worker-1"]["healthy"], 5.0)
                assert time.monotonic() - stopped_at <= 2.0 + 0.5
                results = [f.result(timeout=60) for f in futures]
            finally:
                hung.resume()
        assert all(finished(r) or errored(r) for r in results)
        assert all(finished(r) for r in results if "body" in r)
        assert any(finished(r) and json.loads(r["route"])["worker"] == "worker-0" for r in results)
        wait_for(lambda: workers_view(cluster)["worker-1"]["healthy"], 30.0, 0.2)
        routed = {json.loads(ask(cluster.url, {**body, "max_tokens": 2})["route"])["worker"] for _ in range(4)}
        assert routed == {"worker-0", "worker-1"}


def test_a_worker_whose_engine_dies_is_routed_around_and_restarted(tiny_models):
    """The engine process dies under a live frontend: the worker stops answering /load (routed
    around), exits, and `preble serve` starts it again; requests meanwhile go to the other worker."""
    with LocalCluster(tiny_models("llama"), 2, "round_robin", ["--page-size", "4"],
                      startup_timeout_s=STARTUP_TIMEOUT_S) as cluster:
        frontend = psutil.Process(worker_pid(cluster, 1))
        engine = next(c for c in frontend.children() if "spawn_main" in " ".join(c.cmdline()))
        engine.kill()
        wait_for(lambda: not workers_view(cluster)["worker-1"]["healthy"], 5.0)
        body = {"prompt": [4, 5, 6, 7], "max_tokens": 2}
        assert {json.loads(ask(cluster.url, body)["route"])["worker"] for _ in range(4)} == {"worker-0"}
        wait_for(lambda: not frontend.is_running() or frontend.status() == psutil.STATUS_ZOMBIE, 60.0, 0.2)
        wait_for(lambda: workers_view(cluster)["worker-1"]["healthy"], 120.0, 0.5)
        assert worker_pid(cluster, 1) != frontend.pid
        routed = {json.loads(ask(cluster.url, body)["route"])["worker"] for _ in range(4)}
        assert routed == {"worker-0", "worker-1"}


# ---------------------------------------------------------------------------- guarded cluster


@pytest.fixture(scope="module")
def guarded(tiny_models):
    """Router admits 4 requests at once and wants an API key."""
    cluster = LocalCluster(tiny_models("llama"), 2, "e2", ["--page-size", "4"],
                           startup_timeout_s=STARTUP_TIMEOUT_S,
                           serve_args=["--max-inflight", "4", "--api-key", KEY])
    yield cluster
    cluster.stop()


def test_api_keys_guard_router_and_workers(guarded):
    url = guarded.url
    body = {"prompt": [5, 6, 7], "max_tokens": 2}
    assert httpx.post(f"{url}/v1/completions", json=body).status_code == 401
    wrong = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    assert httpx.post(f"{url}/v1/completions", json=body, headers=AUTH).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200
    # The workers' own endpoints take only the key `preble serve` gave them, not the client's.
    worker = workers_view(guarded, AUTH)["worker-0"]["url"]
    assert httpx.get(f"{worker}/health").status_code == 200
    for path in ("/load", "/kv_events", "/metrics"):
        assert httpx.get(f"{worker}{path}", headers=AUTH).status_code == 401


def test_oversized_and_unsized_bodies_are_refused(guarded):
    url = f"{guarded.url}/v1/completions"
    big = httpx.post(url, content=b"x" * (17 << 20), headers={**AUTH, "Content-Type": "application/json"})
    assert big.status_code == 413 and "error" in big.json()
    chunked = httpx.post(url, content=iter([b'{"prompt": [1]}']), headers=AUTH)
    assert chunked.status_code == 411


def test_overload_gets_429_and_recovers(guarded):
    body = {"prompt": [9, 8, 7, 6], "max_tokens": 32, "ignore_eos": True}
    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(lambda i: httpx.post(f"{guarded.url}/v1/completions", json=body,
                                                     headers=AUTH, timeout=120), range(40)))
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) >= 4
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_error"
    after = httpx.post(f"{guarded.url}/v1/completions", json=body, headers=AUTH, timeout=60)
    assert after.status_code == 200
    assert httpx.get(f"{guarded.url}/health").json()["healthy_workers"] == ["worker-0", "worker-1"]


def test_a_client_that_goes_away_frees_its_request(guarded):
    window = httpx.get(f"{guarded.url}/v1/models", headers=AUTH).json()["data"][0]["max_model_len"]
    body = {"prompt": [3, 1, 4, 1, 5], "max_tokens": window - 5, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60, headers=AUTH) as client:
        with client.stream("POST", f"{guarded.url}/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            next(resp.iter_lines())
    # The router closes its stream to the worker, which aborts the request and frees its KV.
    def idle() -> bool:
        loads = [w["load"] for w in workers_view(guarded, AUTH).values()]
        return all(load and load["running"] == 0 and load["waiting"] == 0 for load in loads)
    wait_for(idle, 10.0, 0.2)


# ---------------------------------------------------------------------------- fuzzed input

_json = st.recursive(st.none() | st.booleans() | st.integers(-(2 ** 40), 2 ** 40) |
                     st.floats(allow_nan=False) | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3),
                     max_leaves=6)
_fields = {
    "prompt": st.one_of(st.text(max_size=30), st.lists(st.integers(-3, 300_000), max_size=12),
                        st.lists(st.lists(st.integers(0, 400), max_size=4), max_size=2), _json),
    "messages": st.one_of(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]),
                                                          "content": st.one_of(st.text(max_size=20), _json)}),
                                   max_size=3), _json),
    "max_tokens": st.one_of(st.integers(-3, 8), st.integers(10 ** 6, 10 ** 15), _json),
    "max_completion_tokens": st.one_of(st.integers(-3, 8), _json),
    "n": st.one_of(st.integers(-2, 20), _json),
    "temperature": st.one_of(st.floats(-1, 3, allow_nan=False), _json),
    "top_p": st.one_of(st.floats(-1, 2, allow_nan=False), _json),
    "top_k": st.one_of(st.integers(-3, 50), _json),
    "stop": st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=20), _json),
    "stop_token_ids": st.one_of(st.lists(st.integers(-2, 10 ** 7), max_size=3), _json),
    "stream": st.one_of(st.booleans(), _json),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), _json),
    "model": st.one_of(st.text(max_size=8), _json),
    "seed": st.one_of(st.integers(-(2 ** 70), 2 ** 70), _json),
    "logit_bias": _json,
    "echo": _json,
}
_bodies = st.builds(lambda known, extra: {**extra, **known},
                    st.fixed_dictionaries({}, optional=_fields),
                    st.dictionaries(st.text(max_size=6), _json, max_size=2))
# Valid requests with some fields fuzzed (the prompt added per endpoint): these reach the engine.
_nearly_valid = st.tuples(st.just("valid"), st.sampled_from(sorted(set(_fields) - {"prompt", "messages"})).flatmap(
    lambda key: _fields[key].map(lambda value: {key: value})))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(_bodies, _nearly_valid, st.binary(max_size=48)), chat=st.booleans())
def test_fuzzed_bodies_get_answers_or_4xx_never_5xx(guarded, body, chat):
    url = f"{guarded.url}/v1/{'chat/completions' if chat else 'completions'}"
    if isinstance(body, tuple):
        prompt = {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": [11, 12, 13]}
        body = {**prompt, "max_tokens": 4, **body[1]}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(timeout=30, headers={**AUTH, "Content-Type": "application/json"}) as client:
        with client.stream("POST", url, content=raw) as resp:
            if resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream"):
                events = sse_events(resp)
                assert events[-1] == "[DONE]"
                return
            resp.read()
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert resp.json()["error"]["message"]


@pytest.mark.parametrize("field, value", [
    ("seed", 2 ** 70), ("seed", -(2 ** 70)), ("seed", 2 ** 63), ("stop_token_ids", [2 ** 70]),
    ("max_tokens", 2 ** 70), ("n", 2 ** 70), ("top_k", 2 ** 70), ("temperature", 1e308),
    ("prompt", [2 ** 70]), ("prompt", [-1]), ("stop", ["x"] * 17), ("logit_bias", {"1": 5}),
])
def test_edge_values_get_4xx_and_leave_workers_up(guarded, field, value):
    body = {"prompt": [11, 12, 13], "max_tokens": 4, field: value}
    resp = httpx.post(f"{guarded.url}/v1/completions", json=body, headers=AUTH, timeout=30)
    assert 400 <= resp.status_code < 500 and resp.json()["error"]["message"], resp.text
    ok = httpx.post(f"{guarded.url}/v1/completions", json={"prompt": [1, 2], "max_tokens": 2}, headers=AUTH)
    assert ok.status_code == 200


# ---------------------------------------------------------------------------- shutdown


def test_sigterm_drains_in_flight_streams_then_exits_0(guarded):
    body = {"prompt": [2, 7, 1, 8], "max_tokens": 120, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60, headers=AUTH) as client:
        with client.stream("POST", f"{guarded.url}/v1/completions", json=body) as resp:
            lines = resp.iter_lines()
            next(lines)
            guarded.proc.send_signal(signal.SIGTERM)
            rest = [json.loads(x[6:]) if x != "data: [DONE]" else "[DONE]"
                    for x in lines if x.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    assert rest[-2]["choices"][0]["finish_reason"] == "length"
    assert guarded.proc.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{guarded.url}/health")
