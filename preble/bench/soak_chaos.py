"""The soak's chaos: one event at a time, on a random worker of a `preble serve` cluster, a kill
(SIGKILL to the worker's frontend: its engine follows, and `preble serve`'s supervisor starts the
worker again) or a stop (SIGSTOP to the frontend and its engine for longer than the router's
health timeout, then SIGCONT). Kills and stops alternate in a random order, so both happen in any
two events.

After each event, once the router has seen the worker down and has it healthy and followed
again, the KV check compares the router's picture of each worker's cache (the event's worker
first) with the cache itself. While requests run, the router counts a prompt it has just routed
as held before the worker has computed it (by design: the next request with that prefix should
go there too), so only an idle worker's picture must equal its cache. The check therefore holds
new requests until the cluster is idle, then asks the router for the pages it believes the
worker holds (`/workers`: `cached_pages`) and the worker for its whole cache (the resync batch
that opens `/kv_events`), until both counts agree, within `kv_settle_s`. Pages the router still
claims from before a kill or a stop count on its side only; pages it missed on the worker's
only. Workers never evict in a soak (`num_pages`), so every prompt the router routed to a worker
is one the worker holds once it is idle.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec

from ..core.kv_events import PagesStored
from ..core.messages import KVEventBatch
from .soak_config import SoakConfig
from .soak_load import Traffic

ACTIONS = ("kill", "stop")
LIVE = "live"  # the router's state of a worker whose KV events it follows
PROC = Path("/proc")
_batch = msgspec.json.Decoder(KVEventBatch)


@dataclass(frozen=True)
class KVCheck:
    """The router's count of the worker's pages and the worker's own, at the last comparison."""

    worker: str
    ok: bool
    router_pages: int | None
    worker_pages: int | None
    waited_s: float  # from the cluster being idle to agreement (or to giving up)


@dataclass(frozen=True)
class ChaosEvent:
    """One event; times in seconds from the start of the run (None: not seen)."""

    at_s: float
    worker: str
    action: str  # "kill" | "stop"
    pid: int
    new_pid: int | None  # the worker's frontend after a kill: started again by `preble serve`
    down_seen_s: float | None  # the router first showed it unhealthy
    recovered_s: float | None  # healthy and followed again (None: not within recover_timeout_s)
    kv: list[KVCheck]  # the event's worker first, then the others; empty: not checked (not recovered)


# ---------------------------------------------------------------------------- processes


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc, so no process library is needed)."""
    out = []
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cmdline(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def worker_pid(serve_pid: int, worker_id: str) -> int | None:
    """The frontend process of `preble worker --worker-id worker_id` under `preble serve`."""
    for pid in children(serve_pid):
        args = cmdline(pid)
        if "worker" in args and worker_id in args:
            return pid
    return None


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (a worker's frontend and its engine)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------- the router's view


@dataclass(frozen=True)
class WorkerView:
    healthy: bool
    live: bool  # the router follows its KV events
    cached_pages: int | None
    url: str


async def router_view(client: httpx.AsyncClient, router: str, worker_id: str) -> WorkerView:
    entry = next(w for w in (await client.get(f"{router}/workers")).json() if w["worker_id"] == worker_id)
    events = entry.get("kv_events") or {}
    return WorkerView(entry["healthy"], events.get("state") == LIVE, entry.get("cached_pages"), entry["url"])


async def worker_pages(client: httpx.AsyncClient, worker_url: str, key: str) -> int:
    """The pages in the worker's cache: its resync batch, the first line of a `/kv_events` subscription."""
    async with client.stream("GET", f"{worker_url}/kv_events", headers={"Authorization": f"Bearer {key}"}) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line:
                batch = _batch.decode(line)
                if batch.resync:
                    return sum(len(e.page_hashes) for e in batch.events if isinstance(e, PagesStored))
    raise RuntimeError(f"{worker_url}/kv_events ended before its resync batch")


async def kv_check(client: httpx.AsyncClient, router: str, worker_id: str, key: str, settle_s: float,
                   poll_s: float) -> KVCheck:
    """Compare, with the cluster idle, until the counts agree or `settle_s` has passed."""
    start = time.monotonic()
    while True:
        view = await router_view(client, router, worker_id)
        pages = await worker_pages(client, view.url, key)
        agree = view.healthy and view.live and view.cached_pages == pages
        if agree or time.monotonic() - start > settle_s:
            return KVCheck(worker_id, agree, view.cached_pages, pages, round(time.monotonic() - start, 3))
        await asyncio.sleep(poll_s)


# ---------------------------------------------------------------------------- events


@dataclass
class Cluster:
    """What the chaos loop needs of the running cluster."""

    router: str
    serve_pid: int
    worker_ids: list[str]
    key: str  # the workers' API key
    start: float  # time.monotonic() at the start of the run

    def now(self) -> float:
        return time.monotonic() - self.start


@dataclass
class Recovery:
    down_seen_s: float | None = None
    new_pid: int | None = None
    recovered_s: float | None = None


async def wait_recovered(client: httpx.AsyncClient, cluster: Cluster, worker_id: str, old_pid: int | None,
                         resumed: asyncio.Event, cfg: SoakConfig) -> Recovery:
    """Watch the router from the moment of the event until the worker has resumed (after a kill:
    a new process of it has started) and the router, having seen it down, shows it healthy and
    followed again: a router that never noticed would still be showing its view of the old process."""
    rec, deadline = Recovery(), time.monotonic() + cfg.recover_timeout_s
    while time.monotonic() < deadline:
        view = await router_view(client, cluster.router, worker_id)
        if not view.healthy and rec.down_seen_s is None:
            rec.down_seen_s = round(cluster.now(), 3)
        if old_pid is not None and rec.new_pid is None:
            pid = worker_pid(cluster.serve_pid, worker_id)
            rec.new_pid = pid if pid != old_pid else None
        back = resumed.is_set() and (old_pid is None or rec.new_pid is not None)
        if back and rec.down_seen_s is not None and view.healthy and view.live:
            rec.recovered_s = round(cluster.now(), 3)
            return rec
        await asyncio.sleep(cfg.poll_s)
    return rec


async def one_event(client: httpx.AsyncClient, cluster: Cluster, traffic: Traffic, cfg: SoakConfig,
                    worker_id: str, action: str) -> ChaosEvent:
    """The event, its recovery, then the KV check of every worker with the cluster idle."""
    pid = worker_pid(cluster.serve_pid, worker_id)
    if pid is None:
        raise RuntimeError(f"{worker_id} has no process under preble serve")
    at = round(cluster.now(), 3)
    resumed = asyncio.Event()
    watch = asyncio.create_task(wait_recovered(client, cluster, worker_id, pid if action == "kill" else None,
                                               resumed, cfg))
    try:
        if action == "kill":
            os.kill(pid, signal.SIGKILL)
        else:
            await stop_for(tree(pid), cfg.stop_s)
    finally:
        resumed.set()
    rec = await watch
    kv: list[KVCheck] = []
    if rec.recovered_s is not None:
        async with traffic.hold():
            for w in [worker_id, *(w for w in cluster.worker_ids if w != worker_id)]:
                kv.append(await kv_check(client, cluster.router, w, cluster.key, cfg.kv_settle_s, cfg.poll_s))
    return ChaosEvent(at, worker_id, action, pid, rec.new_pid, rec.down_seen_s, rec.recovered_s, kv)


async def stop_for(pids: list[int], seconds: float) -> None:
    """SIGSTOP, then SIGCONT after `seconds` (also if this task is cancelled meanwhile)."""
    signal_all(pids, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        signal_all(pids, signal.SIGCONT)


async def chaos(cluster: Cluster, traffic: Traffic, cfg: SoakConfig, events: list[ChaosEvent]) -> None:
    """Events from `chaos_start_s` until `chaos_quiet_tail_s` before the end, each after the
    previous one has recovered and a pause drawn around `chaos_interval_s`."""
    rng = random.Random(cfg.seed + 2)
    last_start = cfg.duration_s - cfg.chaos_quiet_tail_s
    await asyncio.sleep(max(0.0, cfg.chaos_start_s - cluster.now()))
    order: list[str] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.request_timeout_s)) as client:
        while cluster.now() < last_start:
            order = order or rng.sample(ACTIONS, len(ACTIONS))
            event = await one_event(client, cluster, traffic, cfg, rng.choice(cluster.worker_ids), order.pop())
            events.append(event)
            if event.recovered_s is None:
                return  # a worker that did not come back ends the chaos; the report fails it
            await asyncio.sleep(cfg.chaos_interval_s * rng.uniform(1 - cfg.chaos_jitter, 1 + cfg.chaos_jitter))
