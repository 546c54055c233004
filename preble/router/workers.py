"""The router's view of its workers: health, load reports and KV event streams.

Each Preble worker gets two background loops: one polls `/load` (its answer doubles as the
health check), one follows `/kv_events`; an external OpenAI-compatible engine gets one that polls
`/v1/models`, and a vLLM engine with a KV event endpoint a second one that subscribes to it. All
feed the routing policy; a worker that stops answering
is removed from the policy (and with it every tree entry it held) until it answers again, when
it is re-added and its cache resynced. Reads from a worker's request streams run under
`guard`, which cuts those that have stalled the moment the worker is marked down, so a hung
worker holds no request much longer than the health check takes to notice it.

A failure of the router's own code is not a worker's: a policy callback that raises is logged
with its traceback and counted, and the worker's health is left to its probe; a loop that dies
is logged, counted and restarted (a KV event follower then resyncs the worker's whole cache), so
the router keeps routing on a fresh picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import httpx
import msgspec
import zmq

from ..core.kv_events import PagesStored
from ..core.messages import KVEventBatch, LoadReport
from ..core.routing.base import RoutingPolicy
from .config import WorkerPoolConfig
from .vllm_events import VllmEventTranslator, follow_vllm_events

log = logging.getLogger(__name__)

_batch_decoder = msgspec.json.Decoder(KVEventBatch)
_load_decoder = msgspec.json.Decoder(LoadReport)


class WorkerDown(Exception):
    """The worker was marked down while a request waited on it."""


@dataclass
class WorkerHandle:
    url: str
    worker_id: str
    healthy: bool = False
    last_ok: float = 0.0
    load: LoadReport | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    events_task: asyncio.Task | None = None
    watchers: dict[asyncio.Timeout, float] = field(default_factory=dict)  # reads waiting on it -> start
    model: str | None = None  # an external engine's model name, sent with each request
    kv_events: str | None = None  # a vLLM engine's KV event endpoint


class WorkerPool:
    def __init__(self, urls: list[str], policy: RoutingPolicy, config: WorkerPoolConfig,
                 on_change: Callable[[], None] | None = None, api_key: str | None = None,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.policy = policy
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else None
        # Probes and KV event streams; the requests themselves go through `upstream`.
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=config.connect_timeout_s),
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
                                        headers=self._auth)
        self.upstream: aiohttp.ClientSession | None = None  # made in start(), inside the event loop
        self.workers: dict[str, WorkerHandle] = {}
        self._urls = [u.rstrip("/") for u in urls]
        if config.kv_events and len(config.kv_events) != len(urls):
            raise ValueError(f"{len(config.kv_events)} KV event endpoints for {len(urls)} workers")
        self._on_change = on_change
        self._on_failure = on_failure
        self.failures: Counter[str] = Counter()  # the router's own failures by component: policy, loops

    @property
    def external(self) -> bool:
        """Workers are OpenAI-compatible engines: no load reports, and KV events only from vLLM
        engines given an endpoint; the policy tracks the others' caches by what it routed,
        corrected by the cached tokens they report."""
        return self.config.worker_kind != "preble"

    async def start(self) -> None:
        # The requests' client: aiohttp parses responses in C, where httpx runs h11's pure-Python
        # parser per chunk; the router spends less CPU per request and per relayed token.
        self.upstream = aiohttp.ClientSession(
            headers=self._auth, timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=self.config.upstream_idle_s))
        for i, url in enumerate(self._urls):
            handle = WorkerHandle(url, url if self.external else await self._identify(url))
            if self.config.kv_events:
                handle.kv_events = self.config.kv_events[i]
            handle.tasks = [asyncio.create_task(self._restarting("health_check", self._poll, handle))]
            self.workers[handle.worker_id] = handle

    async def _identify(self, url: str) -> str:
        """A worker's self-reported id, or its URL when it does not report one (yet)."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            body = (await self.client.get(f"{url}/health")).json()
            if isinstance(body, dict) and isinstance(body.get("worker_id"), str):
                return body["worker_id"]
        return url

    async def stop(self) -> None:
        for handle in self.workers.values():
            for task in [*handle.tasks, handle.events_task]:
                if task is not None:
                    task.cancel()
        await self.client.aclose()
        if self.upstream is not None:
            await self.upstream.close()

    def healthy(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.healthy]

    @contextlib.asynccontextmanager
    async def guard(self, worker_id: str):
        """Run the awaited read; raise WorkerDown if the worker is (or is meanwhile) marked down
        and the read has waited `stall_grace_s`. A worker that misses health checks while its
        streams still flow (a busy host) keeps them; a hung one loses them at once."""
        handle = self.workers[worker_id]
        start = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(None if handle.healthy else start + self.config.stall_grace_s) as scope:
                handle.watchers[scope] = start
                try:
                    yield
                finally:
                    del handle.watchers[scope]
        except TimeoutError:
            raise WorkerDown(worker_id) from None

    def mark_failed(self, worker_id: str) -> None:
        """Called by the request path when a worker fails a request outright."""
        handle = self.workers.get(worker_id)
        if handle is not None and handle.healthy:
            self._set_health(handle, False)

    def _set_health(self, handle: WorkerHandle, healthy: bool) -> None:
        if handle.healthy == healthy:
            return
        handle.healthy = healthy
        if healthy:
            log.info("worker %s is healthy", handle.worker_id)
            self._call_policy(self.policy.add_worker, handle.worker_id)
            if not self.external or handle.kv_events is not None:
                self._restart_events(handle)  # start over from a full resync of its cache, or a clear one
        else:
            log.warning("worker %s is unreachable; routing around it", handle.worker_id)
            self._call_policy(self.policy.remove_worker, handle.worker_id)
            if handle.events_task is not None:
                handle.events_task.cancel()
                handle.events_task = None
            now = asyncio.get_running_loop().time()
            for scope, start in handle.watchers.items():
                scope.reschedule(max(now, start + self.config.stall_grace_s))
        if self._on_change:
            self._on_change()

    def _restart_events(self, handle: WorkerHandle) -> None:
        if handle.events_task is not None:
            handle.events_task.cancel()
        follow = self._follow_events if handle.kv_events is None else self._follow_vllm_events
        handle.events_task = asyncio.create_task(self._restarting("kv_events", follow, handle))

    def _failed(self, component: str, what: str) -> None:
        log.exception("%s failed", what)
        self.failures[component] += 1
        if self._on_failure:
            self._on_failure(component)

    def _call_policy(self, callback: Callable, *args) -> None:
        """A policy callback; if it raises, that is a bug in the policy, not the worker's fault."""
        try:
            callback(*args)
        except Exception:
            self._failed("policy", f"policy {self.policy.name!r}: {callback.__name__}")

    async def _restarting(self, component: str, loop: Callable[[WorkerHandle], Awaitable[None]],
                          handle: WorkerHandle) -> None:
        """Run one of a worker's loops until it returns or is cancelled; restart it if it dies."""
        while True:
            try:
                return await loop(handle)
            except Exception:
                self._failed(component, f"worker {handle.worker_id}: {component} loop (restarting it)")
            await asyncio.sleep(self.config.reconnect_backoff_s)

    async def _poll(self, handle: WorkerHandle) -> None:
        """The health check: a worker is healthy while its probe answers (a Preble worker's
        `/load`, whose report also goes to the policy; an external engine's `/v1/models`)."""
        cfg = self.config
        probe = self._probe_models if self.external else self._probe_load
        while True:
            try:
                await probe(handle)
            except (httpx.HTTPError, msgspec.DecodeError, ValueError, KeyError, IndexError, TypeError):
                if time.monotonic() - handle.last_ok > cfg.unhealthy_after_s:
                    self._set_health(handle, False)
            else:
                handle.last_ok = time.monotonic()
                self._set_health(handle, True)
                if handle.load is not None:
                    self._call_policy(self.policy.on_load,
                                      msgspec.structs.replace(handle.load, worker_id=handle.worker_id))
            await asyncio.sleep(cfg.load_interval_s)

    async def _probe_load(self, handle: WorkerHandle) -> None:
        resp = await self.client.get(f"{handle.url}/load", timeout=self.config.unhealthy_after_s)
        resp.raise_for_status()
        handle.load = _load_decoder.decode(resp.content)

    async def _probe_models(self, handle: WorkerHandle) -> None:
        resp = await self.client.get(f"{handle.url}/v1/models", timeout=self.config.unhealthy_after_s)
        resp.raise_for_status()
        handle.model = resp.json()["data"][0]["id"]

    async def _follow_events(self, handle: WorkerHandle) -> None:
        """Apply the worker's KV events in order; any gap or break means reconnect and resync."""
        while True:
            try:
                async with self.client.stream("GET", f"{handle.url}/kv_events") as resp:
                    resp.raise_for_status()
                    expected = None
                    async for line in resp.aiter_lines():
                        if not line:
                            continue
                        batch = _batch_decoder.decode(line)
                        if batch.resync:
                            self.policy.on_resync(handle.worker_id,
                                                  [e for e in batch.events if isinstance(e, PagesStored)])
                            expected = batch.seq + 1
                        elif expected is None or batch.seq != expected:
                            log.warning("worker %s: KV event gap (got %s, expected %s); resyncing",
                                        handle.worker_id, batch.seq, expected)
                            break
                        else:
                            for event in batch.events:
                                self.policy.on_kv_event(handle.worker_id, event)
                            expected += 1
            except (httpx.HTTPError, msgspec.DecodeError) as err:
                log.debug("worker %s: event stream: %s", handle.worker_id, err)
            await asyncio.sleep(self.config.reconnect_backoff_s)

    async def _follow_vllm_events(self, handle: WorkerHandle) -> None:
        """Mirror a vLLM engine's cache from its KV events; it starts out empty, as vLLM cannot
        send its whole cache: what it held before is learnt as it is stored again."""
        translator = VllmEventTranslator(self.config.page_size, name=handle.worker_id)
        try:
            await follow_vllm_events(handle.kv_events, translator,
                                     lambda event: self.policy.on_kv_event(handle.worker_id, event))
        except zmq.ZMQError as err:
            log.error("worker %s: cannot follow KV events at %s (%s); tracking it by routed prompts",
                      handle.worker_id, handle.kv_events, err)
