"""A worker's HTTP endpoints and a router in front of it, in this process (tests/inproc.py): the
SGLang-style `/generate` against the engine's own greedy tokens, the worker's admission limit (429)
and how the router passes it on, the router's 503 when no worker is healthy, and the worker's
endpoints fuzzed from its OpenAPI schema."""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from transformers import AutoTokenizer

from preble.core.sampling_params import SamplingParams
from preble.engine.llm import LLM
from preble.router.config import RouterServerConfig
from preble.router.server import build_router_app

from .inproc import InProcessWorker, free_port, serve_app
from .polling import wait_for

PAGE_SIZE = 4


def cached_on_repeat(prompt_tokens: int) -> int:
    """Cached tokens of a prompt the worker has served whole before: all but its last token
    (at least one is computed), in whole pages."""
    return (prompt_tokens - 1) // PAGE_SIZE * PAGE_SIZE


def sse_events(resp: httpx.Response) -> list:
    """The payloads of a server-sent event stream, '[DONE]' included."""
    out = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def openai_error(resp: httpx.Response) -> dict:
    """The OpenAI-shaped error of a refusal (its four fields, a message that says something)."""
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["code"] == resp.status_code
    return err


@pytest.fixture(scope="module")
def model(tiny_models) -> str:
    return tiny_models("llama")


@pytest.fixture(scope="module")
def worker(model):
    with InProcessWorker(model, "w0", page_size=PAGE_SIZE) as w:
        yield w


@pytest.fixture(scope="module")
def tokenizer(model):
    return AutoTokenizer.from_pretrained(model)


@pytest.fixture(scope="module")
def engine(model):
    """The reference: the same engine in-process (LLM), one request at a time."""
    with LLM(model, device="cpu", page_size=PAGE_SIZE, num_pages=256) as llm:
        yield llm


def router_app(model: str, workers: list[str], **options):
    return build_router_app(RouterServerConfig(model=model, workers=workers, page_size=PAGE_SIZE,
                                               discovery_timeout_s=0.0, **options))


# ---------------------------------------------------------------------------- /generate


def reference(engine: LLM, ids: list[int], **sampling) -> tuple[list[int], str]:
    out = engine.generate(ids, SamplingParams(**sampling))[0].outputs[0]
    return list(out.token_ids), out.finish_reason


@pytest.mark.parametrize("prompt", ["a quiet harbour at dawn, gulls circling", [301, 7, 250, 33, 9, 61, 402, 5, 77]],
                         ids=["text", "input_ids"])
def test_generate_plain_then_streamed_is_the_engines_greedy_output(worker, engine, tokenizer, prompt):
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    key = "text" if isinstance(prompt, str) else "input_ids"
    want, reason = reference(engine, ids, max_tokens=7, temperature=0.0, ignore_eos=True)
    assert reason == "length"
    sampling = {"max_new_tokens": 7, "temperature": 0, "ignore_eos": True}

    def payload(rid: str, cached: int) -> dict:
        return {"text": tokenizer.decode(want, skip_special_tokens=True), "output_ids": want, "meta_info": {
            "id": rid, "prompt_tokens": len(ids), "completion_tokens": 7, "cached_tokens": cached,
            "finish_reason": {"type": "length"}}}

    # Plain, on a cold cache.
    plain = httpx.post(f"{worker.url}/generate", json={key: prompt, "sampling_params": sampling, "rid": f"{key}-1"})
    assert plain.status_code == 200, plain.text
    assert plain.json() == payload(f"{key}-1", 0)

    # Streamed, the same prompt again: it finds all its whole pages but the last token's.
    body = {key: prompt, "sampling_params": sampling, "rid": f"{key}-2", "stream": True}
    with httpx.stream("POST", f"{worker.url}/generate", json=body, timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    *partial, last = events[:-1]
    assert last == payload(f"{key}-2", cached_on_repeat(len(ids)))
    assert cached_on_repeat(len(ids)) >= PAGE_SIZE
    # Each event carries everything so far: ids a growing prefix of the engine's, counts to match.
    seen = 0
    for event in partial:
        got = event["output_ids"]
        assert seen < len(got) < 7 and got == want[:len(got)]
        assert event["meta_info"] == {**last["meta_info"], "completion_tokens": len(got), "finish_reason": None}
        seen = len(got)


def test_generate_stops_at_a_stop_token_as_the_engine_does(worker, engine, tokenizer):
    ids = [11, 402, 99, 7, 350, 12]
    free, _ = reference(engine, ids, max_tokens=8, temperature=0.0, ignore_eos=True)
    stop = free[3]
    want, reason = reference(engine, ids, max_tokens=8, temperature=0.0, ignore_eos=True, stop_token_ids=[stop])
    assert reason == "stop" and len(want) < 8
    resp = httpx.post(f"{worker.url}/generate", json={"input_ids": ids, "sampling_params": {
        "max_new_tokens": 8, "temperature": 0, "ignore_eos": True, "stop_token_ids": [stop]}})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["output_ids"] == want and out["text"] == tokenizer.decode(want, skip_special_tokens=True)
    assert out["meta_info"]["completion_tokens"] == len(want)
    assert out["meta_info"]["finish_reason"] == {"type": "stop"}


def test_generate_refuses_bad_bodies_with_openai_errors(worker):
    for body in ({"sampling_params": {"max_new_tokens": 2}}, {"text": "x", "input_ids": [1]},
                 {"input_ids": []}, {"text": "x", "sampling_params": {"nope": 1}},
                 {"text": "x", "sampling_params": {"max_new_tokens": 10 ** 6}},
                 {"text": "x", "sampling_params": {"temperature": "hot"}}):
        resp = httpx.post(f"{worker.url}/generate", json=body)
        assert resp.status_code == 400, (body, resp.text)
        openai_error(resp)


# ---------------------------------------------------------------------------- 503, 429


def test_a_router_without_a_healthy_worker_answers_503(model):
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with serve_app(router_app(model, [nobody], policy="round_robin")) as url:
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "healthy_workers": [], "workers": 1,
                                 "policy": "round_robin"}
        for path, body in (("/v1/completions", {"prompt": [5, 6, 7], "max_tokens": 2}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
            for stream in (False, True):
                resp = httpx.post(f"{url}{path}", json={**body, "stream": stream})
                assert resp.status_code == 503, resp.text
                assert resp.headers["content-type"] == "application/json"
                assert resp.json() == {"error": {"message": "no healthy worker", "type": "unavailable",
                                                 "param": None, "code": 503}}


@contextlib.contextmanager
def stalled(worker: InProcessWorker):
    """The engine takes requests and keeps reporting its load but makes no progress inside."""
    engine = worker.loop.engine
    step = engine.step

    def no_progress():
        time.sleep(0.002)
        return []

    engine.step = no_progress
    try:
        yield
    finally:
        engine.step = step


def test_a_full_worker_answers_429_and_the_router_passes_it_on(model):
    with InProcessWorker(model, "busy", page_size=PAGE_SIZE, max_inflight=1) as w, \
            serve_app(router_app(model, [w.url], policy="round_robin")) as router, \
            ThreadPoolExecutor(1) as pool:
        wait_for(lambda: httpx.get(f"{router}/health").status_code == 200, 10.0, step_s=0.05)
        body = {"prompt": [3, 4, 5, 6], "max_tokens": 3, "ignore_eos": True, "temperature": 0}
        with stalled(w):
            held = pool.submit(httpx.post, f"{w.url}/v1/completions", json=body, timeout=30)
            wait_for(lambda: httpx.get(f"{w.url}/load").json()["waiting"] == 1, 10.0, step_s=0.02)
            refusal = {"error": {"message": "overloaded: 1 requests in flight; retry in 1 s",
                                 "type": "rate_limit_error", "param": None, "code": 429}}
            # At the worker: every generating endpoint shares its one slot.
            for path, asked in (("/v1/completions", body), ("/generate", {"input_ids": [3, 4], "sampling_params": {}}),
                                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
                resp = httpx.post(f"{w.url}{path}", json=asked)
                assert (resp.status_code, resp.headers.get("retry-after"), resp.json()) == (429, "1", refusal), path
            # Through the router, whole or streamed: the worker's 429 as it is (no other worker
            # to try; a refusal is not retried), Retry-After included, and the worker stays up.
            for stream in (False, True):
                resp = httpx.post(f"{router}/v1/completions", json={**body, "stream": stream}, timeout=30)
                assert (resp.status_code, resp.headers.get("retry-after"), resp.json()) == (429, "1", refusal)
                assert resp.headers["content-type"] == "application/json"
            assert [x["healthy"] for x in httpx.get(f"{router}/workers").json()] == [True]
            metrics = httpx.get(f"{router}/metrics").text
            assert 'preble_router_requests_total{status="rejected"} 2.0' in metrics.splitlines()
        first = held.result(timeout=30)
        assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] == 3
        after = httpx.post(f"{router}/v1/completions", json=body, timeout=30)
        assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 3
