"""The soak's load: a seeded plan of mixed requests (chat and completions, streamed and whole,
some clients that disconnect on purpose) whose prompts share a few system blocks, sent at
Poisson arrival times by a bounded number of concurrent clients; each request's outcome is
decided by `soak_outcomes`.

The chaos loop holds new sends while it compares a worker's cache with the router's picture of
it (`Traffic.hold`), which needs that worker idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from .soak_config import SoakConfig
from .soak_outcomes import (
    DONE,
    Outcome,
    RequestResult,
    Verdict,
    classify_stream,
    classify_whole,
    has_text,
    parse_sse_line,
)
from .workloads.base import poisson_arrivals

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
# Requests planned for a run: twice the mean number of Poisson arrivals, plus a few for short
# runs, which a run's arrivals stay far below.
PLAN_FACTOR, PLAN_EXTRA = 2, 10


@dataclass(frozen=True)
class RequestPlan:
    index: int
    endpoint: str  # "chat" | "completions"
    stream: bool
    max_tokens: int
    cancel_after: int | None  # text chunks after which the client disconnects on purpose
    body: dict


def word(rng: random.Random, letters: tuple[int, int]) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(*letters)))


def words(rng: random.Random, n: int, letters: tuple[int, int]) -> str:
    return " ".join(word(rng, letters) for _ in range(n))


def shared_blocks(cfg: SoakConfig) -> list[str]:
    """The system blocks prompts share (each request starts with one), deterministic by seed."""
    rng = random.Random(cfg.seed)
    return [f"System {i}: {words(rng, cfg.block_words, cfg.word_letters)}" for i in range(cfg.shared_blocks)]


def plan_request(index: int, rng: random.Random, blocks: list[str], cfg: SoakConfig) -> RequestPlan:
    """One request: a shared block and a tail of its own, its endpoint, streaming and length."""
    block = rng.choice(blocks)
    tail = f"Request {index}: {words(rng, cfg.tail_words, cfg.word_letters)}"
    endpoint = "chat" if rng.random() < cfg.chat_share else "completions"
    stream = rng.random() < cfg.stream_share
    cancel = stream and rng.random() < cfg.cancel_share
    max_tokens = rng.randint(*cfg.max_tokens)
    body: dict = {"max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if endpoint == "chat":
        body["messages"] = [{"role": "system", "content": block}, {"role": "user", "content": tail}]
    else:
        body["prompt"] = f"{block}\n{tail}"
    return RequestPlan(index, endpoint, stream, max_tokens, cfg.cancel_after_chunks if cancel else None, body)


def plan_requests(cfg: SoakConfig) -> tuple[list[RequestPlan], list[float]]:
    """Every request the run may send and its arrival time; the run sends those due before its end."""
    n = int(cfg.rate * cfg.duration_s * PLAN_FACTOR) + PLAN_EXTRA
    rng, blocks = random.Random(cfg.seed + 1), shared_blocks(cfg)
    return [plan_request(i, rng, blocks, cfg) for i in range(n)], poisson_arrivals(n, cfg.rate, cfg.seed)


async def ask_whole(client: httpx.AsyncClient, plan: RequestPlan) -> Verdict:
    resp = await client.post(PATHS[plan.endpoint], json=plan.body)
    return classify_whole(resp.status_code, _json_or_none(resp), plan.max_tokens)


async def ask_stream(client: httpx.AsyncClient, plan: RequestPlan) -> Verdict:
    """Read the stream to its end, or leave after `cancel_after` text chunks (cancelled)."""
    async with client.stream("POST", PATHS[plan.endpoint], json=plan.body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return classify_whole(resp.status_code, _json_or_none(resp), plan.max_tokens)
        payloads: list[dict | str] = []
        texts = 0
        async for line in resp.aiter_lines():
            payload = parse_sse_line(line)
            if payload is None:
                continue
            payloads.append(payload)
            texts += has_text(payload)
            if plan.cancel_after is not None and texts >= plan.cancel_after and payload != DONE:
                return Verdict(Outcome.CANCELLED, 200, detail=f"left after {texts} text chunks")
        return classify_stream(payloads, plan.max_tokens)


def _json_or_none(resp: httpx.Response):
    try:
        return resp.json()
    except ValueError:
        return None


async def ask(client: httpx.AsyncClient, plan: RequestPlan, timeout_s: float) -> Verdict:
    """The request's verdict; a dropped connection is lost, no outcome within `timeout_s` is hung."""
    try:
        async with asyncio.timeout(timeout_s):
            return await (ask_stream if plan.stream else ask_whole)(client, plan)
    except TimeoutError:
        return Verdict(Outcome.HUNG, detail=f"no outcome within {timeout_s:.0f} s")
    except httpx.HTTPError as err:
        return Verdict(Outcome.LOST, detail=f"{type(err).__name__}: {err}")
    except ValueError as err:  # a data line that is not JSON
        return Verdict(Outcome.LOST, 200, detail=f"broken stream: {err}")


class Traffic:
    """The requests in flight, and a gate the chaos loop closes to let the cluster go idle."""

    def __init__(self, clients: int) -> None:
        self.clients = asyncio.Semaphore(clients)
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.inflight = 0
        self.held_s = 0.0  # time the gate was closed

    async def slot(self) -> None:
        """Wait for an open gate and a free client (the gate is checked again once one frees up)."""
        while True:
            await self._open.wait()
            await self.clients.acquire()
            if self._open.is_set():
                self.inflight += 1
                self._idle.clear()
                return
            self.clients.release()

    def release(self) -> None:
        self.clients.release()
        self.inflight -= 1
        if not self.inflight:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """No new request leaves inside; entered once every request in flight has ended."""
        self._open.clear()
        start = time.monotonic()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()
            self.held_s += time.monotonic() - start


@dataclass
class LoadRun:
    """What the load generator did: requests sent (counted as they leave) and their results."""

    sent: int = 0
    results: list[RequestResult] = field(default_factory=list)
    late_s: float = 0.0  # the most a request left after its arrival time (clients busy or gate closed)


async def drive(url: str, cfg: SoakConfig, traffic: Traffic, start: float, run: LoadRun) -> None:
    """Send every planned request due before the end of the run, then wait for all of them."""
    plans, arrivals = plan_requests(cfg)
    limits = httpx.Limits(max_connections=cfg.clients, max_keepalive_connections=cfg.clients)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
        tasks = []
        for plan, at in zip(plans, arrivals):
            if at >= cfg.duration_s:
                break
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            await traffic.slot()
            sent_s = time.monotonic() - start
            run.sent += 1
            run.late_s = max(run.late_s, sent_s - at)
            tasks.append(asyncio.create_task(_one(client, plan, cfg, traffic, start, sent_s, run.results)))
        await asyncio.gather(*tasks)


async def _one(client: httpx.AsyncClient, plan: RequestPlan, cfg: SoakConfig, traffic: Traffic, start: float,
               sent_s: float, results: list[RequestResult]) -> None:
    try:
        verdict = await ask(client, plan, cfg.request_timeout_s)
    finally:
        traffic.release()
    results.append(RequestResult(plan.index, plan.endpoint, plan.stream, plan.max_tokens, sent_s,
                                 time.monotonic() - start, verdict))
