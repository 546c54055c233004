"""A live KV event stream that loses a batch: the router's follower notices the sequence gap at the
next batch, reconnects, and the worker's resync makes the router's picture of its cache equal to
the cache again. A real worker (engine and app in this process) behind a proxy that drops one
batch; the picture is compared with the engine's radix cache prefix by prefix."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import msgspec

from preble.core.messages import KVEventBatch
from preble.core.routing.e2 import E2Config, E2Policy
from preble.router.config import WorkerPoolConfig
from preble.router.workers import WorkerPool

from .inproc import InProcessWorker, wait_async

PAGE = 4
_decode = msgspec.json.Decoder(KVEventBatch)


def router_picture(policy: E2Policy, worker_id: str) -> set[tuple[int, ...]]:
    """Every page-aligned prefix the router's tree says the worker holds."""
    tree, out = policy.tree, set()
    for node in tree.lru(worker_id):
        tokens = tree.path_tokens(node)
        out.update(tuple(tokens[:end]) for end in range(node.depth + PAGE, node.end + 1, PAGE))
    return out


def test_a_lost_batch_is_noticed_at_the_next_and_resynced_to_the_exact_cache(tiny_models, caplog):
    with InProcessWorker(tiny_models("llama"), "w0", page_size=PAGE) as worker, \
            caplog.at_level(logging.WARNING, logger="preble.router.workers"):
        asyncio.run(_lose_one_batch(worker))
    assert any("KV event gap" in r.getMessage() for r in caplog.records)


async def _lose_one_batch(worker: InProcessWorker) -> None:
    real = httpx.AsyncClient(base_url=worker.url, timeout=30)
    connections: list[int] = []  # /kv_events connections opened
    dropped: list[KVEventBatch] = []

    async def proxy(request: httpx.Request) -> httpx.Response:
        """The worker as is, except that the first connection's first batch after its resync is lost."""
        if request.url.path != "/kv_events":
            r = await real.request(request.method, request.url.path)
            return httpx.Response(r.status_code, content=r.content, headers={"content-type": r.headers["content-type"]})
        number = len(connections)
        connections.append(number)
        upstream = await real.send(real.build_request("GET", "/kv_events"), stream=True)

        async def lines():
            try:
                async for line in upstream.aiter_lines():
                    if not line:
                        continue
                    batch = _decode.decode(line)
                    if number == 0 and not batch.resync and not dropped:
                        dropped.append(batch)
                        continue
                    yield line.encode() + b"\n"
            finally:
                await upstream.aclose()

        return httpx.Response(200, content=lines(), headers={"content-type": "application/x-ndjson"})

    async def generate(ids: list[int]) -> None:
        # One output token: the request is prefilled, finished and cached in one engine step,
        # so its pages reach subscribers as one batch.
        resp = await real.post("/generate", json={"input_ids": ids, "sampling_params": {"max_new_tokens": 1}})
        assert resp.status_code == 200, resp.text

    policy = E2Policy(time.monotonic, config=E2Config(page_size=PAGE))
    pool = WorkerPool([worker.url], policy, WorkerPoolConfig(load_interval_s=0.05, unhealthy_after_s=10.0,
                                                             reconnect_backoff_s=0.05, page_size=PAGE))
    await pool.client.aclose()
    pool.client = httpx.AsyncClient(transport=httpx.MockTransport(proxy))
    try:
        await generate([(5 * i) % 500 + 3 for i in range(23)])  # in the first resync
        await pool.start()
        await wait_async(lambda: router_picture(policy, "w0") == worker.cached_prefixes() != set())
        before = worker.cached_prefixes()

        # The lost batch: the router cannot tell yet, and misses exactly the pages it stored.
        await generate([(7 * i) % 500 + 3 for i in range(18)])
        await wait_async(lambda: len(dropped) == 1)
        await asyncio.sleep(0.3)  # a batch sent after it would have reached the router by now
        after_lost = worker.cached_prefixes()
        assert after_lost > before
        assert router_picture(policy, "w0") == before and connections == [0]
        assert policy.view.follows_events("w0")

        # The next batch shows the gap: reconnect, resync, and the picture is the cache again.
        await generate([(11 * i) % 500 + 3 for i in range(13)])
        await wait_async(lambda: len(connections) == 2 and router_picture(policy, "w0") == worker.cached_prefixes())
        assert worker.cached_prefixes() > after_lost
        assert router_picture(policy, "w0") == worker.cached_prefixes()
        assert policy.view.follows_events("w0") and pool.workers["w0"].healthy
        assert pool.failures == {}
    finally:
        await pool.stop()
        await real.aclose()
