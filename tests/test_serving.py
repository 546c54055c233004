"""End to end on CPU: `preble serve` with 2 workers on a tiny model, driven over HTTP."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from preble.bench.local_cluster import LocalCluster

STARTUP_TIMEOUT_S = 120
PAGE_SIZE = 4  # the workers' KV page size


def cached_on_repeat(prompt_tokens: int) -> int:
    """Cached tokens of a prompt the worker has served whole before: the scheduler matches all
    but the prompt's last token (at least one is computed), in whole pages."""
    return (prompt_tokens - 1) // PAGE_SIZE * PAGE_SIZE


class Cluster(LocalCluster):
    def __init__(self, model: str, policy: str) -> None:
        super().__init__(model, 2, policy, ["--page-size", str(PAGE_SIZE)], startup_timeout_s=STARTUP_TIMEOUT_S)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def completion(self, prompt, **kw) -> httpx.Response:
        return self.client.post("/v1/completions", json={"prompt": prompt, "temperature": 0, **kw})


def route(resp: httpx.Response) -> dict:
    return json.loads(resp.headers["x-preble-route"])


def processes_with(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "--", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="module")
def e2_cluster(tiny_models):
    cluster = Cluster(tiny_models("llama"), "e2")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def rr_cluster(tiny_models):
    cluster = Cluster(tiny_models("llama"), "round_robin")
    yield cluster
    cluster.stop()


def test_completion_and_chat_plain_and_streamed(e2_cluster):
    c = e2_cluster
    resp = c.completion("the cat sat on", max_tokens=5, ignore_eos=True)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"

    chat = c.client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4, "ignore_eos": True})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"

    request = {"messages": [{"role": "user", "content": "hello again"}], "max_tokens": 6,
               "ignore_eos": True, "temperature": 0}
    with c.client.stream("POST", "/v1/chat/completions", json={
            **request, "stream": True, "stream_options": {"include_usage": True}}) as stream:
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    streamed = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    plain = c.client.post("/v1/chat/completions", json=request).json()
    assert streamed == plain["choices"][0]["message"]["content"]


def test_e2_sends_a_shared_prefix_to_the_same_worker_and_hits_its_cache(e2_cluster):
    c = e2_cluster
    prefix = [(7 * i) % 400 + 3 for i in range(160)]
    first = c.completion(prefix + [11, 12, 13], max_tokens=3, ignore_eos=True)
    assert first.status_code == 200
    time.sleep(0.5)  # the worker's KV events reach the router
    second = c.completion(prefix + [21, 22, 23, 24], max_tokens=3, ignore_eos=True)
    assert second.status_code == 200
    assert route(second)["worker"] == route(first)["worker"]
    assert route(second)["branch"] == "exploit"
    # The first request cached its prompt and output in whole pages: the 160-token prefix (40
    # pages), then [11, 12, 13, its first output token], which the second's [21, 22, 23, 24] misses.
    assert route(second)["matched_tokens"] == 160
    assert second.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 160


def test_round_robin_alternates(rr_cluster):
    workers = [route(rr_cluster.completion([5, 6, 7, 8], max_tokens=1))["worker"] for _ in range(4)]
    assert workers[0] != workers[1] and workers[0] == workers[2] and workers[1] == workers[3]


def test_bad_requests_get_openai_errors(e2_cluster):
    c = e2_cluster
    for body in ({"prompt": "x", "max_tokens": -1}, {"prompt": "x", "temperature": "hot"},
                 {"prompt": [1, 10**9]}, {"prompt": "x", "n": 1000}, {"prompt": "x", "unknown_field": 1},
                 {"prompt": "x", "max_tokens": 10**9}):
        resp = c.client.post("/v1/completions", json=body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["message"]
    resp = c.client.post("/v1/completions", json={"prompt": "x", "model": "nope"})
    assert resp.status_code == 404
    resp = c.client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400


def test_openai_sdk_works_against_the_router(e2_cluster):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{e2_cluster.url}/v1", api_key="unused")
    model = client.models.list().data[0].id
    done = client.completions.create(model=model, prompt="once upon", max_tokens=3, temperature=0)
    assert done.usage.completion_tokens == 3
    # The same chat streamed twice: the second goes where the first's prompt is cached and
    # reports its whole pages (all but the last token) as cached.
    asked = {"model": model, "messages": [{"role": "user", "content": "hi from the SDK test"}], "max_tokens": 3,
             "stream": True, "stream_options": {"include_usage": True}}
    answers = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(**asked)
        answers.append((route(raw), list(raw.parse())))
        time.sleep(0.5)  # the worker's KV events reach the router
    (first_route, _), (second_route, chunks) = answers
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].usage.prompt_tokens > 2 * PAGE_SIZE
    assert second_route["worker"] == first_route["worker"] and second_route["branch"] == "exploit"
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == cached_on_repeat(chunks[-1].usage.prompt_tokens)
    # n choices, a seed that makes sampling repeatable, a stop sequence, typed errors.
    messages = [{"role": "user", "content": "count"}]
    a, b = (client.chat.completions.create(model=model, messages=messages, max_tokens=6, n=2, seed=7,
                                           temperature=1.0) for _ in range(2))
    assert len(a.choices) == 2 and [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    full = client.completions.create(model=model, prompt="once upon", max_tokens=8, temperature=0).choices[0].text
    stop = next(full[i:i + 2] for i in range(1, len(full) - 1) if not full[i:i + 2].isspace())
    cut = client.completions.create(model=model, prompt="once upon", max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="x", max_tokens=10 ** 9)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)


def test_serve_stops_cleanly_on_sigterm(tiny_models):
    cluster = Cluster(tiny_models("llama"), "least_load")
    marker = f"--port {cluster.port + 1}"
    try:
        assert processes_with(marker)
    finally:
        assert cluster.stop() == 0
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_with(marker), "worker processes outlived serve"


def test_load_generator_records_every_request(e2_cluster):
    import asyncio

    from preble.bench.loadgen import LoadConfig, LoadRequest, run_load

    shared = [(11 * i) % 400 + 3 for i in range(96)]
    reqs = [LoadRequest(f"r{i}", shared + [i + 5, i + 6], max_tokens=3) for i in range(8)]
    records = asyncio.run(run_load(reqs, LoadConfig(url=e2_cluster.url, rate=20.0, seed=1)))
    assert [r.request_id for r in records] == [r.request_id for r in reqs]
    assert all(r.error is None for r in records), [r.error for r in records]
    assert all(r.output_tokens == 3 and r.ttft > 0 and r.latency >= r.ttft for r in records)
    assert all(r.worker is not None and r.branch in {"exploit", "explore", "pd", "rebalance", "replicate"}
               for r in records)
    assert sum(r.cached_tokens for r in records) > 0
    arrivals = [r.arrival for r in records]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0


def test_bench_serve_command_summarises_a_workload(e2_cluster, tmp_path):
    from typer.testing import CliRunner

    from preble.cli import app
    from preble.sim.report import summarize

    jsonl = tmp_path / "records.jsonl"
    result = CliRunner().invoke(app, [
        "bench", "serve", "--url", e2_cluster.url, "--workload", "shared_prefix", "--num-requests", "8",
        "--rate", "20", "--param", "groups=2", "--param", "system_len=64", "--param", "question_len=8",
        "--param", "output_len=2", "--param", "vocab_size=500", "--jsonl", str(jsonl), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["requests"] == 8 and summary["errors"] == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 8
    # The summary is the statistics of the records written, each a real answer.
    assert all(0 < r["ttft"] <= r["latency"] and r["output_tokens"] == 2 for r in records)
    expected = summarize(records)
    for key in ("mean_latency", "p50_latency", "p99_latency", "mean_ttft", "p99_ttft", "throughput", "hit_ratio",
                "prompt_tokens", "cached_tokens"):
        assert summary[key] == pytest.approx(expected[key], rel=1e-12), key
    assert summary["hit_ratio"] > 0.3  # two groups of four sharing a 64-token system prompt


def test_bench_serve_sweeps_rates_and_plots_latency_per_label(e2_cluster, tmp_path):
    from typer.testing import CliRunner

    from preble.cli import app

    summaries, png = tmp_path / "summaries.jsonl", tmp_path / "latency.png"
    args = ["bench", "serve", "--url", e2_cluster.url, "--workload", "shared_prefix", "--num-requests", "6",
            "--param", "groups=2", "--param", "system_len=32", "--param", "question_len=8",
            "--param", "output_len=2", "--param", "vocab_size=500", "--summaries", str(summaries), "--json"]
    first = CliRunner().invoke(app, [*args, "--rate", "10", "--rate", "30"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(app, [*args, "--rate", "20", "--label", "other", "--plot", str(png)])
    assert second.exit_code == 0, second.output
    rows = [json.loads(line) for line in summaries.read_text().splitlines()]
    assert [(r["label"], r["rate"]) for r in rows] == [("e2", 10.0), ("e2", 30.0), ("other", 20.0)]
    assert all(r["requests"] == 6 and r["errors"] == 0 for r in rows)
    assert png.stat().st_size > 10_000
