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
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from preble.core.sampling_params import SamplingParams
from preble.engine.llm import LLM
from preble.router.config import RouterServerConfig
from preble.router.server import build_router_app

from .inproc import InProcessWorker, free_port, serve_app
from .polling import wait_for
from .sse import sse_events

PAGE_SIZE = 4


def cached_on_repeat(prompt_tokens: int) -> int:
    """Cached tokens of a prompt the worker has served whole before: all but its last token
    (at least one is computed), in whole pages."""
    return (prompt_tokens - 1) // PAGE_SIZE * PAGE_SIZE


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
    for chunk in partial:
        got = chunk["output_ids"]
        assert seen < len(got) < 7 and got == want[:len(got)]
        assert chunk["meta_info"] == {**last["meta_info"], "completion_tokens": len(got), "finish_reason": None}
        seen = len(got)


def test_streamed_completions_join_to_the_whole_answer_one_choice_or_several(worker, engine):
    """One choice streams the engine's greedy text; n seeded choices stream, interleaved, the
    texts the whole answer gives each, and every choice ends once."""
    prompt = [301, 7, 250, 33, 9, 61, 402, 5, 77]
    want, _ = reference(engine, prompt, max_tokens=6, temperature=0.0, ignore_eos=True)
    greedy = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    seeded = {"prompt": prompt, "max_tokens": 6, "temperature": 1.0, "seed": 11, "n": 3, "ignore_eos": True}
    for body in (greedy, seeded):
        whole = httpx.post(f"{worker.url}/v1/completions", json=body, timeout=30)
        assert whole.status_code == 200, whole.text
        texts = [c["text"] for c in sorted(whole.json()["choices"], key=lambda c: c["index"])]
        if body is greedy:
            assert texts == [engine.tokenizer.decode(want)]
        else:
            assert len(set(texts)) > 1  # the seeded choices differ: not one stream copied
        with httpx.stream("POST", f"{worker.url}/v1/completions", json={**body, "stream": True}, timeout=30) as resp:
            events = sse_events(resp)
        assert events[-1] == "[DONE]"
        joined, ends = [""] * len(texts), [0] * len(texts)
        for chunk in events[:-1]:
            for choice in chunk["choices"]:
                joined[choice["index"]] += choice["text"]
                ends[choice["index"]] += choice["finish_reason"] is not None
        assert joined == texts and ends == [1] * len(texts)


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


def test_an_engine_in_a_long_step_is_alive_until_the_busy_limit(model):
    """An engine cannot report during a step: with a request in flight, a step longer than the
    idle health timeout leaves the worker healthy; silence past the busy limit does not."""
    idle_s, busy_s, long_step_s = 0.3, 1.5, 0.9
    with InProcessWorker(model, "slow", page_size=PAGE_SIZE, health_timeout_s=idle_s,
                         busy_engine_timeout_s=busy_s) as w, ThreadPoolExecutor(1) as pool:
        engine = w.loop.engine
        step = engine.step
        pause = {"s": long_step_s}

        def slow_step():
            time.sleep(pause["s"])
            return step()

        body = {"prompt": [3, 4, 5, 6], "max_tokens": 3, "ignore_eos": True, "temperature": 0}
        engine.step = slow_step
        try:
            answer = pool.submit(httpx.post, f"{w.url}/v1/completions", json=body, timeout=30)
            codes, times = [], []
            while not answer.done():
                codes.append(httpx.get(f"{w.url}/health").status_code)
                times.append(time.monotonic())
                time.sleep(0.05)
            assert answer.result().status_code == 200
            assert set(codes) == {200}  # never 503 ...
            # ... over the request's three long steps, polled often enough that some poll fell in each
            # step's stretch of silence past the idle timeout (a busy machine polls less often)
            gaps = [b - a for a, b in zip(times, times[1:])]
            assert times[-1] - times[0] > 2 * long_step_s and max(gaps) < long_step_s - idle_s, gaps
            pause["s"] = busy_s + 1.0  # a step that outlasts the busy limit: dead, as far as anyone can tell
            stuck = pool.submit(httpx.post, f"{w.url}/v1/completions", json=body, timeout=30)
            wait_for(lambda: httpx.get(f"{w.url}/health").status_code == 503, busy_s + 0.9, step_s=0.05)
            stuck.result()
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


# ---------------------------------------------------------------------------- fuzzed from the schema

_json = st.recursive(st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3),
                     max_leaves=6)


def from_schema(schema: dict, components: dict, depth: int = 0) -> st.SearchStrategy:
    """Values of an OpenAPI (JSON Schema) type, near and beyond its bounds, or any JSON at all."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, components, depth) for s in schema["anyOf"]])
    if "const" in schema or "enum" in schema:
        choices = [schema["const"]] if "const" in schema else schema["enum"]
        return st.sampled_from(choices) | _json
    kind = schema.get("type")
    lo, hi = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum")
    if kind == "integer":
        near = [int(b) + d for b in (lo, hi) if b is not None for d in (-1, 0, 1)]
        typed = st.integers(-3, 20) | st.integers(-(2 ** 70), 2 ** 70) | st.sampled_from(near or [0])
    elif kind == "number":
        near = [float(b) + d for b in (lo, hi) if b is not None for d in (-0.5, 0.0, 1e-9)]
        typed = st.floats() | st.sampled_from(near or [0.0])
    elif kind == "string":
        typed = st.text(max_size=24)
    elif kind == "boolean":
        typed = st.booleans()
    elif kind == "null":
        typed = st.none()
    elif kind == "array" and depth < 3:
        typed = st.lists(from_schema(schema.get("items", {}), components, depth + 1),
                         max_size=min(schema.get("maxItems", 6) + 1, 6))
    elif kind == "object" and depth < 3 and "properties" in schema:
        fields = {k: from_schema(v, components, depth + 1) for k, v in schema["properties"].items()}
        required = {k: fields.pop(k) for k in schema.get("required", ()) if k in fields}
        typed = st.fixed_dictionaries(required, optional=fields)
    else:
        typed = _json
    return st.one_of(typed, typed, _json) if depth else typed


# A valid body per endpoint (short outputs), to which fuzzed fields are added: these reach the engine.
VALID = {"/v1/completions": {"prompt": [11, 12, 13], "max_tokens": 4},
         "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
         "/generate": {"input_ids": [11, 12, 13], "sampling_params": {"max_new_tokens": 4}}}
# /generate's sampling_params is a free object in the schema; these are the keys SGLang's takes.
_SGLANG_SAMPLING = st.fixed_dictionaries({}, optional={
    k: st.integers(-3, 10) | st.floats(-1, 3) | _json
    for k in ("max_new_tokens", "temperature", "top_p", "top_k", "stop", "stop_token_ids", "ignore_eos",
              "skip_special_tokens", "seed", "n", "min_p")})


def worker_bodies(app) -> dict[str, st.SearchStrategy]:
    """path -> bodies for each POST endpoint of the worker's OpenAPI schema that takes JSON: the
    schema's own type (fields near and past their bounds), any JSON, bytes, or a valid body with
    some of the schema's fields fuzzed."""
    doc = app.openapi()
    components = doc["components"]["schemas"]
    out = {}
    for path, ops in doc["paths"].items():
        body = ops.get("post", {}).get("requestBody")
        if body is None:
            continue
        schema = body["content"]["application/json"]["schema"]
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
        fields = {k: from_schema(v, components, 1) for k, v in schema["properties"].items()}
        if path == "/generate":
            fields["sampling_params"] = _SGLANG_SAMPLING
        some = st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2, unique=True).flatmap(
            lambda keys, fields=fields: st.fixed_dictionaries({k: fields[k] for k in keys}))
        nearly_valid = some.map(lambda fuzzed, base=VALID[path]: {**base, **fuzzed})
        out[path] = from_schema(schema, components) | _json | st.binary(max_size=48) | nearly_valid | nearly_valid
    return out


def test_the_schema_names_every_generating_endpoint(worker):
    assert set(worker_bodies(worker.app)) == {"/v1/completions", "/v1/chat/completions", "/generate"}


@pytest.fixture(scope="module")
def fuzz_targets(worker):
    return worker_bodies(worker.app)


def beyond_64_bits(body) -> bool:
    """A prompt token id msgpack cannot carry: the worker must refuse it before encoding it."""
    if not isinstance(body, dict):
        return False
    ids = body.get("input_ids", body.get("prompt"))
    flat = [y for x in ids for y in (x if isinstance(x, list) else [x])] if isinstance(ids, list) else []
    return any(isinstance(x, int) and not isinstance(x, bool) and not -2 ** 63 <= x < 2 ** 64 for x in flat)


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": [2 ** 64], "max_tokens": 2}),
    ("/v1/completions", {"prompt": [[-2 ** 63 - 1]], "max_tokens": 2}),
    ("/generate", {"input_ids": [2 ** 70], "sampling_params": {"max_new_tokens": 2}}),
])
def test_huge_prompt_token_ids_get_a_400(worker, path, body):
    assert beyond_64_bits(body)
    resp = httpx.post(f"{worker.url}{path}", json=body)
    assert resp.status_code == 400, resp.text  # as for the id 2**63, which the engine refuses
    openai_error(resp)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_bodies_get_answers_or_4xx_never_5xx(worker, fuzz_targets, data):
    path = data.draw(st.sampled_from(sorted(fuzz_targets)), label="path")
    body = data.draw(fuzz_targets[path], label="body")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(timeout=60, headers={"Content-Type": "application/json"}) as client:
        with client.stream("POST", f"{worker.url}{path}", content=raw) as resp:
            event(f"{path}: {resp.status_code}")
            if resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream"):
                assert sse_events(resp)[-1] == "[DONE]"
                return
            resp.read()
    assert resp.status_code == 200 or 400 <= resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        openai_error(resp)


def test_the_worker_serves_after_the_fuzzing(worker, engine):
    """Run after the fuzzing (file order): nothing it sent broke the engine or the frontend."""
    ids = [17, 4, 260, 8, 91]
    want, _ = reference(engine, ids, max_tokens=3, temperature=0.0, ignore_eos=True)
    resp = httpx.post(f"{worker.url}/generate", json={"input_ids": ids, "sampling_params": {
        "max_new_tokens": 3, "temperature": 0, "ignore_eos": True}})
    assert resp.status_code == 200 and resp.json()["output_ids"] == want
    assert worker.loop is not None and httpx.get(f"{worker.url}/load").status_code == 200
    # Nothing left running or queued; the report may be one load interval old, so wait for it.
    wait_for(lambda: httpx.get(f"{worker.url}/load").json()["running"] == 0, 5.0, step_s=0.05)
    assert httpx.get(f"{worker.url}/load").json()["waiting"] == 0
