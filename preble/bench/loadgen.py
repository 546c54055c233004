"""Open-loop load generator: send a workload to an OpenAI-compatible server on a schedule.

Requests leave at their arrival times whatever the server's progress (open loop), as Poisson
arrivals at a given rate or at the times a trace gives. Each is streamed, so time to first token
is measured at the client; the routing decision comes from the `x-preble-route` header when the
server is a Preble router.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import httpx

from .workloads.base import poisson_arrivals


@dataclass(frozen=True)
class LoadRequest:
    """What the generator needs of a workload request."""

    request_id: str
    prompt: str | list[int]
    max_tokens: int
    arrival: float = 0.0  # seconds from the start, for trace arrivals


@dataclass
class RequestRecord:
    request_id: str
    arrival: float  # seconds from the start of the run
    first_token_time: float | None
    finish_time: float | None
    ttft: float | None
    tpot: float | None
    latency: float | None
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    worker: str | None
    branch: str | None
    error: str | None = None


@dataclass(frozen=True)
class LoadConfig:
    url: str
    model: str | None = None
    rate: float | None = None  # requests/s for Poisson arrivals; None: the requests' own arrival times
    duration: float | None = None  # stop sending after this many seconds
    seed: int = 0
    request_timeout_s: float = 600.0
    ignore_eos: bool = True  # generate exactly max_tokens, so runs are comparable


def arrival_times(reqs: Sequence[LoadRequest], cfg: LoadConfig) -> list[float]:
    if cfg.rate is None:
        return [r.arrival for r in reqs]
    return poisson_arrivals(len(reqs), cfg.rate, cfg.seed)


async def _one(client: httpx.AsyncClient, cfg: LoadConfig, req: LoadRequest, arrival: float,
               start: float) -> RequestRecord:
    body = {"prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0.0, "stream": True,
            "ignore_eos": cfg.ignore_eos, "stream_options": {"include_usage": True}}
    if cfg.model:
        body["model"] = cfg.model
    sent = time.monotonic()
    first = None
    use: dict = {}
    route: dict = {}
    try:
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                raise RuntimeError(f"HTTP {resp.status_code}: {text[:200]}")
            route = json.loads(resp.headers.get("x-preble-route", "{}"))
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("error"):
                    raise RuntimeError(data["error"].get("message", "stream error"))
                if data.get("choices") and first is None:
                    first = time.monotonic()
                if data.get("usage"):
                    use = data["usage"]
    except (httpx.HTTPError, RuntimeError, ValueError) as err:
        return RequestRecord(req.request_id, arrival, None, None, None, None, None, 0, 0, 0,
                             route.get("worker"), route.get("branch"), error=str(err) or type(err).__name__)
    end = time.monotonic()
    out_tokens = use.get("completion_tokens", 0)
    ttft = (first or end) - sent
    return RequestRecord(
        request_id=req.request_id, arrival=arrival, first_token_time=(first or end) - start,
        finish_time=end - start, ttft=ttft,
        tpot=(end - (first or end)) / (out_tokens - 1) if out_tokens > 1 else None,
        latency=end - sent, prompt_tokens=use.get("prompt_tokens", 0),
        cached_tokens=(use.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
        output_tokens=out_tokens, worker=route.get("worker"), branch=route.get("branch"))


async def run_load(reqs: Sequence[LoadRequest], cfg: LoadConfig,
                   on_done: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    """Send every request at its arrival time; return one record per request sent."""
    times = arrival_times(reqs, cfg)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=cfg.url.rstrip("/"), timeout=cfg.request_timeout_s,
                                 limits=limits) as client:
        start = time.monotonic()
        tasks = []
        for req, at in zip(reqs, times):
            if cfg.duration is not None and at > cfg.duration:
                break
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(client, cfg, req, at, start))
            if on_done is not None:
                task.add_done_callback(lambda t: on_done(t.result()))
            tasks.append(task)
        return list(await asyncio.gather(*tasks))


def write_jsonl(records: Sequence[RequestRecord], path) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
