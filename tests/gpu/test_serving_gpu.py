"""`preble serve` on a GPU over a weightless llama3-8b folder (real widths, 4 layers, random weights
drawn at load time with `--load-format dummy`), checked against an engine built in this process from
the same folder and seed: greedy text, plain and streamed, prefix-cache hits and a clean shutdown.

Both sides run in float32: a request's greedy picks must not depend on the batch it ran in, and in
bfloat16 another batch composition changes the rounding enough to flip near-tied picks of random
weights. The module's tests share one cluster; the last one stops it.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from preble import LLM, SamplingParams
from preble.bench.local_cluster import LocalCluster
from preble.engine.config import EngineConfig
from preble.models.random_folder import write_random_model_folder

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
SHAPE = dict(num_layers=4)  # real widths; few layers, so the cluster starts fast
DTYPE = "float32"
WORKER_MEMORY = ["--kv-cache-gib", "4"]
ENGINE_MEMORY = dict(kv_cache_gib=2)
MAX_TOKENS = 32
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
PAGE_SIZE = EngineConfig.page_size  # the workers' too: they are started without --page-size
SHARED_PREFIX = 256
STOP_GRACE_S = 60.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_random_model_folder(tmp_path_factory.mktemp("random-model") / "llama3-8b", "llama3-8b", **SHAPE)


@pytest.fixture(scope="module")
def engine(folder):
    llm = LLM(str(folder), device=DEVICE, load_format="dummy", dtype=DTYPE, **ENGINE_MEMORY)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def cluster(folder):
    cluster = LocalCluster(str(folder), workers=1, device=DEVICE, startup_timeout_s=600, stop_grace_s=STOP_GRACE_S,
                           worker_args=["--load-format", "dummy", "--dtype", DTYPE, *WORKER_MEMORY])
    yield cluster
    cluster.stop()


def expected_texts(engine: LLM, prompts: list[list[int]]) -> list[str]:
    """The in-process engine's greedy tokens, decoded as the workers decode them."""
    outs = engine.generate(prompts, GREEDY)
    return [engine.tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in outs]


def token_prompts(n: int, seed: int, length: tuple[int, int] = (8, 200)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(256, 100_000) for _ in range(rng.randint(*length))] for _ in range(n)]


def complete(cluster: LocalCluster, prompt: list[int], **extra) -> httpx.Response:
    body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True, **extra}
    resp = httpx.post(f"{cluster.url}/v1/completions", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp


def test_greedy_completions_match_the_in_process_engine(cluster, engine):
    one_by_one = token_prompts(3, seed=1)
    for prompt, expected in zip(one_by_one, expected_texts(engine, one_by_one)):
        body = complete(cluster, prompt).json()
        assert body["choices"][0]["text"] == expected
        assert body["usage"]["completion_tokens"] == MAX_TOKENS
    batch = token_prompts(8, seed=2)
    with ThreadPoolExecutor(len(batch)) as pool:
        texts = list(pool.map(lambda p: complete(cluster, p).json()["choices"][0]["text"], batch))
    assert texts == expected_texts(engine, batch)


def test_streamed_completion_joins_to_the_same_text(cluster, engine):
    prompt = token_prompts(1, seed=3)[0]
    body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{cluster.url}/v1/completions", json=body, timeout=300) as stream:
        assert stream.status_code == 200
        events = [line[len("data: "):] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == expected_texts(engine, [prompt])[0]
    assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS


def test_shared_prefix_is_served_from_the_cache_in_whole_pages(cluster, engine):
    rng = random.Random(4)
    prefix = [rng.randrange(256, 100_000) for _ in range(SHARED_PREFIX)]
    first = prefix + [rng.randrange(256, 50_000) for _ in range(20)]
    second = prefix + [rng.randrange(50_000, 100_000) for _ in range(20)]
    complete(cluster, first)
    body = complete(cluster, second).json()
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == SHARED_PREFIX // PAGE_SIZE * PAGE_SIZE
    assert body["choices"][0]["text"] == expected_texts(engine, [second])[0]


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc (the serving stack is Linux-only)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # it exited while being read
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found.update(below)
        todo.extend(below)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited process whose parent has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_whole_cluster_cleanly(cluster):
    """Last: it stops the module's cluster."""
    pids = descendants(cluster.proc.pid) | {cluster.proc.pid}
    assert len(pids) >= 3, "expected the launcher, its worker and the worker's engine process"
    start = time.monotonic()
    assert cluster.stop() == 0  # SIGKILL after the grace period would give -9
    assert time.monotonic() - start < STOP_GRACE_S
    deadline = time.monotonic() + 10
    while any(map(running, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if running(pid)], "processes of the cluster outlived it"
