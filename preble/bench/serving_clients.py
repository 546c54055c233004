"""The clients of `preble bench serving`: one for sequential requests, and a pool of client
processes for a batch of concurrent ones.

One Python client cannot drive 256 streams: on the H100 run it used 93% of its core at 256
streams, and requests waited a median 1.7 s between being sent and reaching the router, so the
benchmark measured its own client. The pool splits a batch over processes (each with its own event
loop and keep-alive connections, kept across batches), which start it at one agreed instant.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

import httpx
import msgspec

from ..http.timing import TIMING_HEADER

START_DELAY_S = 0.05  # a batch starts this long after it is handed out, in every process at once
REQUEST_TIMEOUT_S = 600.0
# Idle connections are dropped after this long, well before the servers close theirs
# (http.serve.KEEP_ALIVE_S), so a request never goes out on a connection being closed.
KEEPALIVE_EXPIRY_S = 5.0


class Client:
    """Token-id completions against one server. Streams are read as bytes and parsed once at the
    end, so that the client's own work per event stays small next to the server's."""

    def __init__(self, url: str, model: str, limit: int) -> None:
        self.url, self.model = url, model
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
                                      limits=httpx.Limits(max_connections=limit + 8, max_keepalive_connections=limit + 8,
                                                          keepalive_expiry=KEEPALIVE_EXPIRY_S))

    def body(self, prompt: list[int], max_tokens: int, stream: bool) -> dict:
        return {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "ignore_eos": True, "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}

    async def stream(self, prompt: list[int], max_tokens: int) -> dict:
        sent = time.time()
        first, events, raw = None, 0, []
        async with self.http.stream("POST", f"{self.url}/v1/completions", json=self.body(prompt, max_tokens, True),
                                    headers={TIMING_HEADER: "1"}) as resp:
            resp.raise_for_status()
            async for data in resp.aiter_bytes():
                first = first or time.time()
                events += data.count(b"data: ")
                raw.append(data)
        end = time.time()
        last = _usage_event(b"".join(raw))
        return {"sent": sent, "first": first, "end": end, "events": events, "usage": last.get("usage") or {},
                "timing": last.get("timing")}

    async def whole(self, prompt: list[int], max_tokens: int) -> dict:
        sent = time.time()
        resp = await self.http.post(f"{self.url}/v1/completions", json=self.body(prompt, max_tokens, False),
                                    headers={TIMING_HEADER: "1"})
        resp.raise_for_status()
        answer = resp.json()
        return {"sent": sent, "end": time.time(), "usage": answer["usage"], "timing": answer.get("timing")}

    async def aclose(self) -> None:
        await self.http.aclose()


def _usage_event(stream: bytes) -> dict:
    """The stream's usage chunk (the last data event before [DONE] that has one)."""
    for event in reversed(stream.split(b"\n\n")):
        if event.startswith(b"data: {") and b'"usage"' in event:
            return msgspec.json.decode(event[len(b"data: "):])
    return {}


async def _attempts(client: Client, prompts: list[list[int]], max_tokens: int, stream: bool,
                    start_at: float) -> list[dict | str]:
    """Each request's result, or how it failed: a server's failure is counted, not fatal."""
    run = client.stream if stream else client.whole

    async def attempt(prompt: list[int]) -> dict | str:
        try:
            return await run(prompt, max_tokens)
        except httpx.HTTPError as err:
            return f"{type(err).__name__} {time.time() - start_at:.2f} s into the batch: {err}"

    await asyncio.sleep(max(0.0, start_at - time.time()))
    return await asyncio.gather(*(attempt(p) for p in prompts))


async def _serve_batches(conn, url: str, model: str, limit: int) -> None:
    """A client process: run each batch handed over `conn` and send back its answers and the CPU
    seconds they took, until an empty message."""
    client = Client(url, model, limit)
    loop = asyncio.get_running_loop()
    conn.send_bytes(b"ready")
    try:
        while job := await loop.run_in_executor(None, conn.recv_bytes):
            batch = msgspec.json.decode(job)
            cpu = time.process_time()
            answers = await _attempts(client, batch["prompts"], batch["max_tokens"], batch["stream"],
                                      batch["start_at"])
            conn.send_bytes(msgspec.json.encode({"answers": answers, "cpu": time.process_time() - cpu}))
    finally:
        await client.aclose()


def _client_process(conn, url: str, model: str, limit: int) -> None:
    asyncio.run(_serve_batches(conn, url, model, limit))


class ClientPool:
    """`processes` client processes against one server; `run` splits a batch among them."""

    def __init__(self, url: str, model: str, processes: int, limit: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        per_process = -(-limit // processes)
        for _ in range(processes):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_client_process, args=(theirs, url, model, per_process), daemon=True)
            proc.start()
            self.conns.append(ours)
            self.procs.append(proc)
        for conn in self.conns:  # started and imported: a batch's start time is then theirs too
            conn.recv_bytes()

    def run(self, prompts: list[list[int]], max_tokens: int, stream: bool) -> tuple[float, list[dict | str], float]:
        """(start time, each request's result or failure, the busiest process's CPU seconds)."""
        start_at = time.time() + START_DELAY_S
        shares = [prompts[i::len(self.conns)] for i in range(len(self.conns))]
        used = [(conn, share) for conn, share in zip(self.conns, shares) if share]
        for conn, share in used:
            conn.send_bytes(msgspec.json.encode({"prompts": share, "max_tokens": max_tokens, "stream": stream,
                                                 "start_at": start_at}))
        replies = [msgspec.json.decode(conn.recv_bytes()) for conn, _ in used]
        return start_at, [a for r in replies for a in r["answers"]], max(r["cpu"] for r in replies)

    def close(self) -> None:
        for conn in self.conns:
            conn.send_bytes(b"")
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
