"""Forwarding one request: route it, open it on a worker, relay the answer, retry what has not
reached the client, and report the outcome once to the policy, the metrics and the dashboard.

No accepted request is left without an answer or an error: one whose answer has not reached
the client yet (a stream before its first chunk, a whole answer at any point) is retried on
another worker, a bounded number of times with a growing pause; a stream cut after that ends
with an OpenAI error event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

import aiohttp
import msgspec
from fastapi.responses import JSONResponse, Response

from ..core.routing.base import RequestDone, RouteDecision, RouteRequest, RoutingPolicy
from ..http import openai as oai
from ..http.errors import max_tokens_for
from ..http.limits import Admission
from ..http.logs import REQUEST_ID_HEADER
from ..http.streams import EventStream
from ..http.timing import TIMING_HEADER
from .config import RouterConfig
from .dashboard import Timeline
from .metrics import RequestStatus, RouterMetrics
from .workers import WorkerDown, WorkerPool

log = logging.getLogger("preble.router")

ROUTE_HEADER = "x-preble-route"
# What a failing attempt raises: the worker down or failing, the connection, a malformed chunk.
ATTEMPT_ERRORS = (aiohttp.ClientError, WorkerDown, ValueError)


class WorkerRejected(Exception):
    """The worker refused the request (a 4xx, passed on to the client as is)."""

    def __init__(self, status: int, body: bytes, retry_after: str | None) -> None:
        super().__init__(status)
        self.status, self.body, self.retry_after = status, body, retry_after


class WorkerFailed(Exception):
    """The worker could not answer (down, an error status, a broken or unfinished stream).
    `suspect`: the worker itself may be broken (not just this request), so route around it."""

    def __init__(self, why: str, suspect: bool = True) -> None:
        super().__init__(why)
        self.suspect = suspect


class Upstream:
    """One attempt at one worker: its answer as batches of parsed chunks (those that arrived in
    one read: a relay that fell behind catches up in one event per choice), every read guarded
    so that the worker being marked down ends the wait at once."""

    def __init__(self, pool: WorkerPool, decision: RouteDecision) -> None:
        self.pool, self.decision = pool, decision
        self.worker = decision.worker_id
        self.resp: aiohttp.ClientResponse | None = None
        self.first: list[dict] | None = None  # the first batch, read before the answer starts
        self._reads: AsyncIterator[bytes] | None = None
        self._partial = b""  # the start of a line whose end has not arrived
        self._ended = False  # [DONE] seen

    async def open(self, body: dict, request_id: str, timing: bool = False) -> None:
        """Send the request and read up to its first chunk."""
        worker = self.pool.workers[self.worker]
        if worker.model is not None:  # an external engine wants its model named
            body = {**body, "model": worker.model}
        headers = {"content-type": "application/json", REQUEST_ID_HEADER: request_id,
                   **({TIMING_HEADER: "1"} if timing else {})}
        # msgspec, not a json module: an 8k-token prompt encodes in 0.08 ms instead of 0.7.
        async with self.pool.guard(self.worker):
            self.resp = await self.pool.upstream.post(f"{worker.url}/v1/completions",
                                                      data=msgspec.json.encode(body), headers=headers)
        status = self.resp.status
        if status != 200:
            async with self.pool.guard(self.worker):
                content = await self.resp.read()
            await self.close()
            if 400 <= status < 500 and status != 408:
                raise WorkerRejected(status, content, self.resp.headers.get("retry-after"))
            # A 5xx is this request's failure; the health check judges the worker.
            raise WorkerFailed(f"status {status}", suspect=False)
        self._reads = self.resp.content.iter_any()
        self.first = await self._next_batch()

    async def batches(self) -> AsyncIterator[list[dict]]:
        """Every chunk of the answer in arrival batches, the first included; ends at [DONE]."""
        batch = self.first
        while batch is not None:
            yield batch
            batch = await self._next_batch()

    async def _next_batch(self) -> list[dict] | None:
        """The chunks of the next read (more reads while none is complete); None after [DONE]."""
        batch: list[dict] = []
        while not batch and not self._ended:
            async with self.pool.guard(self.worker):
                data = await anext(self._reads, None)
            if data is None:
                raise WorkerFailed("the stream ended before [DONE]")
            *lines, self._partial = (self._partial + data).split(b"\n")
            for line in lines:
                if not line.startswith(b"data: ") or self._ended:
                    continue
                payload = line[len(b"data: "):].rstrip(b"\r")
                if payload == b"[DONE]":
                    self._ended = True
                else:
                    batch.append(msgspec.json.decode(payload))
        return batch or None

    async def close(self) -> None:
        """Close the answer; after its [DONE], read the body's end first, so that the connection
        is kept for the next request to this worker (the answer is whole: a failure here costs
        only the connection)."""
        if self.resp is None:
            return
        if self._ended and not self.resp.closed:
            try:
                async with asyncio.timeout(self.pool.config.body_end_timeout_s):
                    async for _ in self._reads:
                        pass
            except (*ATTEMPT_ERRORS, TimeoutError) as err:
                log.debug("worker %s: body end unread after [DONE] (%s)", self.worker, str(err) or type(err).__name__)
        if self.resp.content.at_eof():
            self.resp.release()  # back to the pool
        else:
            self.resp.close()  # the rest unread: the connection cannot carry another request


def merge_choices(batch: list[dict]) -> dict[int, tuple[str, str | None]]:
    """Each choice's text in `batch` joined, with the last finish reason it gave."""
    merged: dict[int, tuple[str, str | None]] = {}
    for data in batch:
        for c in data.get("choices", ()):
            text, reason = merged.get(c["index"], ("", None))
            merged[c["index"]] = (text + (c.get("text") or ""), c.get("finish_reason") or reason)
    return merged


class Outcome:
    """What one request's answer was, reported once to the policy, the dashboard and the metrics."""

    def __init__(self, fwd: Forwarder, rid: str, prompt: list[int], start: float, received: float | None) -> None:
        self.fwd, self.rid, self.prompt, self.start = fwd, rid, prompt, start
        self.first: float | None = None
        self.usage: dict | None = None
        self.received = received  # wall clock, when the client asked for per-hop timing
        self.first_sent: float | None = None
        self.worker_timing: dict = {}

    def saw(self, batch: list[dict]) -> None:
        for data in batch:
            if data.get("usage"):
                self.usage = data["usage"]
            if data.get("timing"):
                self.worker_timing = data["timing"]
            if data.get("choices") and self.first is None:
                self.first = time.monotonic()

    def sending(self) -> None:
        """The answer's first bytes go out now."""
        if self.received is not None and self.first_sent is None:
            self.first_sent = time.time()

    def timing(self) -> dict | None:
        """Per-hop times, the router's around the worker's; None unless asked for."""
        if self.received is None:
            return None
        return {"router_received": self.received, **self.worker_timing, "router_first_sent": self.first_sent}

    def done(self, up: Upstream, status: RequestStatus) -> None:
        end, metrics = time.monotonic(), self.fwd.metrics
        use = self.usage or oai.usage(len(self.prompt), 0, 0)
        ttft = (self.first or end) - self.start
        cached, out_tokens = use["prompt_tokens_details"]["cached_tokens"], use["completion_tokens"]
        ok = status is RequestStatus.OK
        self.fwd.policy.on_done(RequestDone(self.rid, up.worker, len(self.prompt), cached, out_tokens, ttft,
                                            end - self.start, ok=ok))
        self.fwd.timeline.record(ttft, len(self.prompt), cached, ok)
        metrics.requests.labels(status).inc()
        if ok:
            metrics.ttft.observe(ttft)
            metrics.e2e.observe(end - self.start)
            if out_tokens > 1:
                metrics.tpot.observe((end - self.start - ttft) / (out_tokens - 1))
        log.info("request", extra={"fields": {
            "request_id": self.rid, "worker": up.worker, "branch": up.decision.branch, "status": status,
            "prompt_tokens": len(self.prompt), "cached_tokens": cached, "output_tokens": out_tokens,
            "ttft": round(ttft, 6), "latency": round(end - self.start, 6)}})
        metrics.prompt.labels(up.worker).inc(len(self.prompt))
        metrics.cached.labels(up.worker).inc(cached)


class Forwarder:
    """Everything between an admitted, tokenised request and its response."""

    def __init__(self, cfg: RouterConfig, pool: WorkerPool, policy: RoutingPolicy, metrics: RouterMetrics,
                 admission: Admission, timeline: Timeline) -> None:
        self.cfg, self.pool, self.policy, self.metrics = cfg, pool, policy, metrics
        self.admission, self.timeline = admission, timeline
        self.decisions: deque[dict] = deque(maxlen=cfg.recent_decisions)

    async def handle(self, prompt: list[int], body, chat: bool, received: float | None = None) -> Response:
        """`received`: when the request arrived (wall clock), if it asked for per-hop timing."""
        cfg = self.cfg
        max_tokens = max_tokens_for(len(prompt), body.max_new_tokens() if chat else body.max_tokens,
                                    cfg.max_model_len, cfg.default_max_tokens)
        rid = oai.new_id("chatcmpl" if chat else "cmpl")
        start = time.monotonic()
        fwd = self.worker_body(prompt, body, max_tokens)
        self.admission.enter(len(prompt))
        released = streaming = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.admission.leave(len(prompt))

        try:
            if body.stream:
                resp = await self.answer_stream(prompt, body, fwd, rid, chat, Outcome(self, rid, prompt, start,
                                                                                      received), release)
                streaming = True  # released when the stream ends
                return resp
            return await self.answer_whole(prompt, fwd, rid, chat, start, received)
        except WorkerRejected as err:
            self.metrics.requests.labels(RequestStatus.REJECTED).inc()
            headers = {"Retry-After": err.retry_after} if err.retry_after else None
            return Response(err.body, status_code=err.status, media_type="application/json", headers=headers)
        finally:
            if not streaming:
                release()

    @staticmethod
    def worker_body(prompt: list[int], body, max_tokens: int) -> dict:
        """The forwarded request: token ids, the sampling fields the client set (defaults are
        the same everywhere, and external engines may not know Preble's extensions), always
        streamed with usage."""
        fields = body.model_dump(exclude_unset=True, exclude_none=True,
                                 exclude={"model", "messages", "prompt", "max_tokens", "max_completion_tokens",
                                          "stream", "stream_options", "user", "logprobs", "echo"})
        return {**fields, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}

    def failed(self, up: Upstream, rid: str, prompt: list[int], err: BaseException) -> None:
        """An attempt that did not finish: the policy takes its work back, the worker is suspect."""
        self.policy.on_done(RequestDone(rid, up.worker, len(prompt), 0, 0, 0.0, 0.0, ok=False))
        if not isinstance(err, WorkerRejected):
            log.warning("attempt failed", extra={"fields": {"request_id": rid, "worker": up.worker,
                                                            "error": str(err) or type(err).__name__}})
            if getattr(err, "suspect", True):
                self.pool.mark_failed(up.worker)

    async def connect(self, prompt: list[int], body: dict, rid: str, first: int = 0,
                      timing: bool = False) -> tuple[Upstream, int]:
        """Route and open, on other workers (after a growing pause) until one starts answering;
        attempts are numbered from `first`. Returns the upstream and its attempt's number."""
        cfg = self.cfg
        request = RouteRequest(rid, prompt, body["max_tokens"])
        for attempt in range(first, cfg.max_attempts):
            if attempt:
                self.metrics.retries.inc()
                await asyncio.sleep(cfg.retry_backoff_s * 2 ** (attempt - 1))
            if not self.pool.healthy():
                raise oai.APIError(503, "no healthy worker", "unavailable")
            up = Upstream(self.pool, self.policy.route(request))
            try:
                # A retry may land on a worker still running an earlier attempt (one that was
                # only slow): each attempt has its own id there, logged under the router's id.
                await up.open(body, f"{rid}.{attempt}" if attempt else rid, timing)
                return up, attempt
            except (*ATTEMPT_ERRORS, WorkerFailed, WorkerRejected) as err:
                await up.close()
                self.failed(up, rid, prompt, err)
                if isinstance(err, WorkerRejected):
                    raise
        raise oai.APIError(503, f"no worker answered after {cfg.max_attempts} attempts", "unavailable")

    def record(self, decision: RouteDecision, rid: str) -> None:
        self.metrics.branches.labels(self.policy.name, decision.branch).inc()
        entry = {"request_id": rid, "time": time.time(), "worker": decision.worker_id,
                 "branch": decision.branch, "matched_tokens": decision.matched_tokens,
                 "costs": decision.costs}
        self.decisions.append(entry)
        log.info("route", extra={"fields": entry})

    @staticmethod
    def route_header(decision: RouteDecision) -> dict[str, str]:
        return {ROUTE_HEADER: json.dumps({"worker": decision.worker_id, "branch": decision.branch,
                                          "matched_tokens": decision.matched_tokens}, separators=(",", ":"))}

    async def answer_whole(self, prompt: list[int], fwd: dict, rid: str, chat: bool, start: float,
                           received: float | None) -> Response:
        """A non-streamed answer: nothing reaches the client before the end, so any failure is
        retried on another worker while attempts are left."""
        attempt = 0
        while True:
            up, attempt = await self.connect(prompt, fwd, rid, attempt, received is not None)
            outcome = Outcome(self, rid, prompt, start, received)
            texts: dict[int, str] = {}
            reasons: dict[int, str | None] = {}
            try:
                async for batch in up.batches():
                    outcome.saw(batch)
                    for i, (text, reason) in merge_choices(batch).items():
                        texts[i] = texts.get(i, "") + text
                        reasons[i] = reason or reasons.get(i)
            except asyncio.CancelledError:
                self.policy.on_done(RequestDone(rid, up.worker, len(prompt), 0, 0, 0.0, 0.0, ok=False))
                raise
            except (*ATTEMPT_ERRORS, WorkerFailed) as err:
                self.failed(up, rid, prompt, err)
                attempt += 1
                if attempt >= self.cfg.max_attempts:
                    self.metrics.requests.labels(RequestStatus.WORKER_FAILED).inc()
                    raise oai.APIError(502, f"the worker failed mid-request: {err}", "server_error") from None
                continue
            finally:
                await up.close()
            self.record(up.decision, rid)
            outcome.done(up, RequestStatus.OK)
            choices = [oai.choice(i, texts[i], reasons.get(i), chat) for i in sorted(texts)]
            use = outcome.usage or oai.usage(len(prompt), 0, 0)
            answer = oai.completion_body(rid, self.cfg.served_model_name, choices, use, chat)
            outcome.sending()
            if (timing := outcome.timing()) is not None:
                answer["timing"] = timing
            return JSONResponse(answer, headers=self.route_header(up.decision))

    async def answer_stream(self, prompt: list[int], body, fwd: dict, rid: str, chat: bool, outcome: Outcome,
                            release: Callable[[], None]) -> EventStream:
        """A streamed answer: retried until its first chunk is in hand; a worker failing after
        that ends the stream with an error event. However the response ends (a client that
        goes away before it starts included), the upstream is closed and the request released."""
        up, _ = await self.connect(prompt, fwd, rid, timing=outcome.received is not None)
        self.record(up.decision, rid)
        model = self.cfg.served_model_name
        ended = False

        async def end(status: RequestStatus) -> None:
            nonlocal ended
            if not ended:
                ended = True
                await up.close()
                outcome.done(up, status)
                release()

        async def sse() -> AsyncIterator[bytes]:
            started: set[int] = set()
            try:
                async for batch in up.batches():
                    outcome.saw(batch)
                    for i, (text, reason) in merge_choices(batch).items():
                        outcome.sending()
                        yield oai.sse(oai.chunk(rid, model, i, text, reason, chat, first=i not in started))
                        started.add(i)
                if body.include_usage and outcome.usage:
                    yield oai.sse(oai.usage_chunk(rid, model, outcome.usage, chat, outcome.timing()))
                await end(RequestStatus.OK)
            except (*ATTEMPT_ERRORS, WorkerFailed) as err:
                self.metrics.cut.inc()
                log.warning("stream cut", extra={"fields": {"request_id": rid, "worker": up.worker,
                                                            "error": str(err) or type(err).__name__}})
                self.pool.mark_failed(up.worker)
                await end(RequestStatus.WORKER_FAILED)
                yield oai.sse(oai.APIError(502, "the worker failed mid-stream", "server_error").body())
            yield oai.sse("[DONE]")

        return EventStream(sse(), headers=self.route_header(up.decision), on_close=lambda: end(RequestStatus.CLIENT_GONE))
