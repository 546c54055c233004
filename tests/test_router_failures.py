"""The router's own failures are loud and do not stop routing: a policy callback that raises is
logged with its traceback and counted without marking its worker down, and a KV-event follower
that dies is logged, counted and restarted, so the policy gets the worker's cache again."""

from __future__ import annotations

import asyncio
import logging
import random

import httpx
import msgspec

from preble.core.kv_events import ROOT_HASH, PagesStored, chain_hashes
from preble.core.messages import KVEventBatch, LoadReport
from preble.core.routing.e2 import E2Config, E2Policy
from preble.router.config import WorkerPoolConfig
from preble.router.workers import WorkerPool

PAGE = 4


class FlakyPolicy(E2Policy):
    """E2 whose first `on_load` and first `on_resync` raise, as a policy bug would."""

    def __init__(self) -> None:
        super().__init__(lambda: 0.0, config=E2Config(page_size=PAGE))
        self.raise_next = {"on_load", "on_resync"}
        self.reports = 0  # load reports taken after the first

    def _maybe_raise(self, name: str) -> None:
        if name in self.raise_next:
            self.raise_next.discard(name)
            raise KeyError(f"bug in {name}")

    def on_load(self, report: LoadReport) -> None:
        self._maybe_raise("on_load")
        super().on_load(report)
        self.reports += 1

    def on_resync(self, worker_id: str, stored: list[PagesStored]) -> None:
        self._maybe_raise("on_resync")
        super().on_resync(worker_id, stored)


def fake_worker(doc: list[int]):
    """A Preble worker's /health, /load and /kv_events (one resync batch per connection)."""
    report = LoadReport("w0", 0.0, running=0, waiting=0, waiting_tokens=0, kv_used_pages=0, kv_evictable_pages=0,
                        kv_total_pages=100, page_size=PAGE, hit_ratio=0.0, tpot=0.0, num_preemptions=0)
    batch = KVEventBatch("w0", 0, [PagesStored(ROOT_HASH, chain_hashes(doc, PAGE), doc)], resync=True)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"worker_id": "w0"})
        if request.url.path == "/load":
            return httpx.Response(200, content=msgspec.json.encode(report))
        assert request.url.path == "/kv_events"
        return httpx.Response(200, content=msgspec.json.encode(batch) + b"\n")

    return answer


async def settle(predicate, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def test_policy_bugs_and_a_dead_follower_are_logged_counted_and_routed_through(caplog):
    doc = [random.Random(0).randrange(1000) for _ in range(4 * PAGE)]
    policy, counted, health_changes = FlakyPolicy(), [], []

    async def main() -> WorkerPool:
        cfg = WorkerPoolConfig(load_interval_s=0.01, unhealthy_after_s=0.5, reconnect_backoff_s=0.01)
        pool = WorkerPool(["http://w0"], policy, cfg, on_failure=counted.append,
                          on_change=lambda: health_changes.append(pool.workers["w0"].healthy))
        await pool.client.aclose()
        pool.client = httpx.AsyncClient(transport=httpx.MockTransport(fake_worker(doc)))
        await pool.start()
        try:
            await settle(lambda: policy.tree.match(doc).held == {"w0": len(doc)} and policy.reports > 0)
            await asyncio.sleep(0.1)  # more health checks and reconnections: nothing else may fail
            assert not pool.workers["w0"].events_task.done()
        finally:
            await pool.stop()
        return pool

    with caplog.at_level(logging.ERROR, logger="preble.router.workers"):
        pool = asyncio.run(main())
    assert sorted(counted) == ["kv_events", "policy"] and pool.failures == {"kv_events": 1, "policy": 1}
    assert health_changes == [True]  # the policy's bug did not mark the worker down
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2 and all(isinstance(r.exc_info[1], KeyError) for r in tracebacks)
    assert any("on_load" in r.getMessage() for r in tracebacks)
    assert any("kv_events loop (restarting it)" in r.getMessage() for r in tracebacks)
