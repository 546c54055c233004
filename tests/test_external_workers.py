"""`preble router --worker-kind openai` in front of engines that only speak OpenAI's API.

The engines here are Preble workers, but the router treats them as it would vLLM or SGLang: no
load reports and no KV events; health from `/v1/models`; the default policy tracks each engine's
cache by the prompts it routed there, and the engine's own prefix cache shows in the reported cached tokens.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile

import httpx

from preble.bench.local_cluster import free_port_block

from .polling import wait_for


def spawn(args: list[str]) -> subprocess.Popen:
    log = tempfile.TemporaryFile("w+")
    return subprocess.Popen([sys.executable, "-m", "preble.cli", *args], stdout=log, stderr=subprocess.STDOUT)


def test_router_fronts_openai_compatible_engines(tiny_models):
    model = tiny_models("llama")
    port = free_port_block(3)
    urls = [f"http://127.0.0.1:{port + i}" for i in (1, 2)]
    engines = [spawn(["worker", "--model", model, "--port", str(port + i), "--page-size", "4",
                      "--worker-id", f"engine-{i}", "--threads", "1"]) for i in (1, 2)]
    router = spawn(["router", "--model", model, "--port", str(port), "--worker-kind", "openai",
                    *[x for u in urls for x in ("--worker", u)]])
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: len(httpx.get(f"{base}/health", timeout=2).json()["healthy_workers"]) == 2, 120)
        workers = httpx.get(f"{base}/workers").json()
        assert {w["worker_id"] for w in workers} == set(urls)  # no ids of their own: their URLs
        assert all(w["load"] is None for w in workers)  # no load reports from such engines

        shared = [(13 * j) % 400 + 3 for j in range(64)]
        first = httpx.post(f"{base}/v1/completions", json={"prompt": shared + [7, 8], "max_tokens": 2}, timeout=60)
        assert first.status_code == 200
        went = json.loads(first.headers["x-preble-route"])
        assert went["branch"] == "miss"
        # The router believes the engine holds what it sent there, and sends the next request with
        # the same prefix to it; the engine's reported cached tokens confirm the hit.
        second = httpx.post(f"{base}/v1/completions", json={"prompt": shared + [9, 10], "max_tokens": 2}, timeout=60)
        route = json.loads(second.headers["x-preble-route"])
        assert (route["worker"], route["branch"], route["matched_tokens"]) == (went["worker"], "hit", 64)
        assert second.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 60

        # An engine that dies is routed around.
        dead = urls.index(went["worker"])
        engines[dead].send_signal(signal.SIGKILL)
        wait_for(lambda: not next(w for w in httpx.get(f"{base}/workers").json()
                                  if w["worker_id"] == urls[dead])["healthy"], 5)
        after = httpx.post(f"{base}/v1/completions", json={"prompt": shared + [11], "max_tokens": 2}, timeout=60)
        assert after.status_code == 200
        assert json.loads(after.headers["x-preble-route"])["worker"] == urls[1 - dead]
    finally:
        for proc in [router, *engines]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [router, *engines]:
            proc.wait(timeout=60)
