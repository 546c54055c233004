"""The router's HTTP shell: OpenAI endpoints in front of N workers.

It tokenises once (chat template included), asks the routing policy for a worker, forwards the
token ids to that worker's `/v1/completions` as a stream, and relays the answer in the shape the
client asked for. Every response carries the routing decision in `x-preble-route`.

No accepted request is left without an answer or an error: one whose answer has not reached
the client yet (a stream before its first chunk, a whole answer at any point) is retried on
another worker, a bounded number of times with a growing pause; a stream cut after that ends
with an OpenAI error event. Admission is bounded (429 beyond it), bodies are capped, and an
API key can be required.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from transformers import AutoTokenizer

from ..core.routing.base import RequestDone, RouteDecision, RouteRequest, RoutingPolicy
from ..server import openai_protocol as oai
from ..server.http_common import Admission, Guard, check_model, install_error_handlers, max_tokens_for
from ..server.logs import REQUEST_ID_HEADER
from . import dashboard as dash
from .config import RouterConfig
from .dashboard import Timeline
from .workers import WorkerDown, WorkerPool

log = logging.getLogger("preble.router")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
ROUTE_HEADER = "x-preble-route"
DASHBOARD_PAGE = (Path(__file__).parent / "static" / "dashboard.html").read_text()


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("preble_router_requests", "Requests by outcome", ["status"], registry=r)
        self.branches = Counter("preble_router_route_branch", "Routing decisions by policy branch",
                                ["policy", "branch"], registry=r)
        self.retries = Counter("preble_router_retries", "Requests re-sent to another worker", registry=r)
        self.failures = Counter("preble_router_failures", "Failures of the router's own code (logged with "
                                "their traceback): policy callbacks, worker loops restarted", ["component"],
                                registry=r)
        self.cut = Counter("preble_router_streams_cut", "Streams ended by an error event after a worker "
                           "failed mid-answer", registry=r)
        self.ttft = Histogram("preble_router_ttft_seconds", "Time to first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.e2e = Histogram("preble_router_e2e_seconds", "Request latency", buckets=LATENCY_BUCKETS,
                             registry=r)
        self.tpot = Histogram("preble_router_tpot_seconds", "Time per output token after the first",
                              buckets=TPOT_BUCKETS, registry=r)
        self.cached = Counter("preble_router_cached_tokens", "Prompt tokens served from worker caches",
                              ["worker"], registry=r)
        self.prompt = Counter("preble_router_prompt_tokens", "Prompt tokens routed", ["worker"], registry=r)
        self.inflight = Gauge("preble_router_inflight_requests", "Requests admitted and not finished",
                              registry=r)
        self.inflight_tokens = Gauge("preble_router_inflight_prompt_tokens", "Prompt tokens of admitted requests",
                                     registry=r)
        self.worker = {name: Gauge(f"preble_router_worker_{name}", doc, ["worker"], registry=r) for name, doc in [
            ("healthy", "1 if the worker passes its health checks"),
            ("running", "Requests in the worker's running batch (its last load report)"),
            ("waiting", "Requests waiting in the worker's queue"),
            ("kv_usage", "Share of the worker's KV pages in use"),
            ("hit_ratio", "The worker's windowed prefix-cache hit ratio"),
            ("load_seconds", "The policy's load figure for the worker (seconds of queued work; latency, e2, preble_paper)")]}

    def refresh(self, pool: WorkerPool, policy: RoutingPolicy, admission: Admission) -> None:
        """Gauges read at scrape time from the pool's latest load reports and the policy."""
        self.inflight.set(admission.requests)
        self.inflight_tokens.set(admission.tokens)
        for rep in dash.replicas(pool, policy):
            values = {"healthy": float(rep["healthy"]), "running": rep["running"], "waiting": rep["waiting"],
                      "kv_usage": rep["kv_usage"], "hit_ratio": rep["hit_ratio"], "load_seconds": rep["load_s"]}
            for name, value in values.items():
                if value is not None:
                    self.worker[name].labels(rep["worker_id"]).set(value)


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
    """One attempt at one worker: its answer as parsed chunks, every read guarded so that the
    worker being marked down ends the wait at once."""

    def __init__(self, pool: WorkerPool, decision: RouteDecision) -> None:
        self.pool, self.decision = pool, decision
        self.worker = decision.worker_id
        self.resp: httpx.Response | None = None
        self.first: dict | None = None  # the first chunk, read before the answer starts
        self._lines: AsyncIterator[str] | None = None

    async def open(self, body: dict, request_id: str) -> None:
        """Send the request and read up to its first chunk."""
        worker = self.pool.workers[self.worker]
        if worker.model is not None:  # an external engine wants its model named
            body = {**body, "model": worker.model}
        req = self.pool.client.build_request("POST", f"{worker.url}/v1/completions", json=body,
                                             headers={REQUEST_ID_HEADER: request_id})
        async with self.pool.guard(self.worker):
            self.resp = await self.pool.client.send(req, stream=True)
        if self.resp.status_code != 200:
            async with self.pool.guard(self.worker):
                content = await self.resp.aread()
            await self.close()
            if 400 <= self.resp.status_code < 500 and self.resp.status_code != 408:
                raise WorkerRejected(self.resp.status_code, content, self.resp.headers.get("retry-after"))
            # A 5xx is this request's failure; the health check judges the worker.
            raise WorkerFailed(f"status {self.resp.status_code}", suspect=False)
        self._lines = self.resp.aiter_lines()
        self.first = await self._next()

    async def chunks(self) -> AsyncIterator[dict]:
        """Every chunk of the answer, the first included; ends at the worker's [DONE]."""
        data = self.first
        while data is not None:
            yield data
            data = await self._next()

    async def _next(self) -> dict | None:
        while True:
            async with self.pool.guard(self.worker):
                line = await anext(self._lines, None)
            if line is None:
                raise WorkerFailed("the stream ended before [DONE]")
            if line.startswith("data: "):
                data = line[len("data: "):]
                return None if data == "[DONE]" else json.loads(data)

    async def close(self) -> None:
        if self.resp is not None:
            await self.resp.aclose()


class _Stream(StreamingResponse):
    """A streaming response that runs `on_close` however it ends: finished, failed, or cancelled
    by a client that disconnected (before its body started, too)."""

    def __init__(self, content, on_close, **kw) -> None:
        super().__init__(content, media_type="text/event-stream", **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close()


def create_router_app(cfg: RouterConfig, worker_urls: list[str], policy: RoutingPolicy) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    metrics = RouterMetrics()
    pool = WorkerPool(worker_urls, policy, cfg.pool, api_key=cfg.worker_api_key,
                      on_failure=lambda component: metrics.failures.labels(component).inc())
    admission = Admission(cfg.max_inflight, cfg.max_inflight_tokens, cfg.retry_after_s)
    decisions: deque[dict] = deque(maxlen=cfg.recent_decisions)
    timeline = Timeline(cfg.dashboard, time.time)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.start()
        yield
        await pool.stop()

    app = FastAPI(title="Preble router", lifespan=lifespan)
    app.state.pool = pool
    app.add_middleware(Guard, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes,
                       open_paths=frozenset({"/health", "/dashboard"}))  # the page holds no data

    install_error_handlers(app)

    def worker_body(prompt: list[int], body, max_tokens: int) -> dict:
        """The forwarded request: token ids, the sampling fields the client set (defaults are
        the same everywhere, and external engines may not know Preble's extensions), always
        streamed with usage."""
        fields = body.model_dump(exclude_unset=True, exclude_none=True, exclude={"model", "messages", "prompt", "max_tokens",
                                                              "max_completion_tokens", "stream", "stream_options",
                                                              "user", "logprobs", "echo"})
        return {**fields, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}

    def failed(up: Upstream, rid: str, prompt: list[int], err: BaseException) -> None:
        """An attempt that did not finish: the policy takes its work back, the worker is suspect."""
        policy.on_done(RequestDone(rid, up.worker, len(prompt), 0, 0, 0.0, 0.0, ok=False))
        if not isinstance(err, WorkerRejected):
            log.warning("attempt failed", extra={"fields": {"request_id": rid, "worker": up.worker,
                                                            "error": str(err) or type(err).__name__}})
            if getattr(err, "suspect", True):
                pool.mark_failed(up.worker)

    async def connect(prompt: list[int], body: dict, rid: str, first: int = 0) -> tuple[Upstream, int]:
        """Route and open, on other workers (after a growing pause) until one starts answering;
        attempts are numbered from `first`. Returns the upstream and its attempt's number."""
        request = RouteRequest(rid, prompt, body["max_tokens"])
        for attempt in range(first, cfg.max_attempts):
            if attempt:
                metrics.retries.inc()
                await asyncio.sleep(cfg.retry_backoff_s * 2 ** (attempt - 1))
            if not pool.healthy():
                raise oai.APIError(503, "no healthy worker", "unavailable")
            up = Upstream(pool, policy.route(request))
            try:
                # A retry may land on a worker still running an earlier attempt (one that was
                # only slow): each attempt has its own id there, logged under the router's id.
                await up.open(body, f"{rid}.{attempt}" if attempt else rid)
                return up, attempt
            except (httpx.HTTPError, WorkerDown, WorkerFailed, WorkerRejected, ValueError) as err:
                await up.close()
                failed(up, rid, prompt, err)
                if isinstance(err, WorkerRejected):
                    raise
        raise oai.APIError(503, f"no worker answered after {cfg.max_attempts} attempts", "unavailable")

    def record(decision: RouteDecision, rid: str) -> dict:
        metrics.branches.labels(policy.name, decision.branch).inc()
        entry = {"request_id": rid, "time": time.time(), "worker": decision.worker_id,
                 "branch": decision.branch, "matched_tokens": decision.matched_tokens,
                 "costs": decision.costs}
        decisions.append(entry)
        log.info("route", extra={"fields": entry})
        return entry

    def route_header(decision: RouteDecision) -> dict[str, str]:
        return {ROUTE_HEADER: json.dumps({"worker": decision.worker_id, "branch": decision.branch,
                                          "matched_tokens": decision.matched_tokens}, separators=(",", ":"))}

    class Outcome:
        """What one request's answer was, reported once to the policy and the metrics."""

        def __init__(self, rid: str, prompt: list[int], start: float) -> None:
            self.rid, self.prompt, self.start = rid, prompt, start
            self.first: float | None = None
            self.usage: dict | None = None

        def saw(self, data: dict) -> None:
            if data.get("usage"):
                self.usage = data["usage"]
            if data.get("choices") and self.first is None:
                self.first = time.monotonic()

        def done(self, up: Upstream, status: str) -> None:
            end = time.monotonic()
            use = self.usage or oai.usage(len(self.prompt), 0, 0)
            ttft = (self.first or end) - self.start
            cached = use["prompt_tokens_details"]["cached_tokens"]
            ok = status == "ok"
            policy.on_done(RequestDone(self.rid, up.worker, len(self.prompt), cached,
                                       use["completion_tokens"], ttft, end - self.start, ok=ok))
            timeline.record(ttft, len(self.prompt), cached, ok)
            metrics.requests.labels(status).inc()
            out_tokens = use["completion_tokens"]
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

    async def answer_whole(prompt: list[int], body, fwd: dict, rid: str, chat: bool, start: float):
        """A non-streamed answer: nothing reaches the client before the end, so any failure is
        retried on another worker while attempts are left."""
        attempt = 0
        while True:
            up, attempt = await connect(prompt, fwd, rid, attempt)
            outcome = Outcome(rid, prompt, start)
            texts: dict[int, str] = {}
            reasons: dict[int, str | None] = {}
            try:
                async for data in up.chunks():
                    outcome.saw(data)
                    for c in data.get("choices", ()):
                        texts[c["index"]] = texts.get(c["index"], "") + (c.get("text") or "")
                        reasons[c["index"]] = c.get("finish_reason") or reasons.get(c["index"])
            except asyncio.CancelledError:
                policy.on_done(RequestDone(rid, up.worker, len(prompt), 0, 0, 0.0, 0.0, ok=False))
                raise
            except (httpx.HTTPError, WorkerDown, WorkerFailed, ValueError) as err:
                failed(up, rid, prompt, err)
                attempt += 1
                if attempt >= cfg.max_attempts:
                    metrics.requests.labels("worker_failed").inc()
                    raise oai.APIError(502, f"the worker failed mid-request: {err}", "server_error") from None
                continue
            finally:
                await up.close()
            record(up.decision, rid)
            outcome.done(up, "ok")
            choices = [oai.choice(i, texts[i], reasons.get(i), chat) for i in sorted(texts)]
            use = outcome.usage or oai.usage(len(prompt), 0, 0)
            return JSONResponse(oai.completion_body(rid, cfg.served_model_name, choices, use, chat),
                                headers=route_header(up.decision))

    async def answer_stream(prompt: list[int], body, fwd: dict, rid: str, chat: bool, start: float,
                            release) -> StreamingResponse:
        """A streamed answer: retried until its first chunk is in hand; a worker failing after
        that ends the stream with an error event. However the response ends (a client that
        goes away before it starts included), the upstream is closed and the request released."""
        up, _ = await connect(prompt, fwd, rid)
        record(up.decision, rid)
        outcome = Outcome(rid, prompt, start)
        model = cfg.served_model_name
        ended = False

        async def end(status: str) -> None:
            nonlocal ended
            if not ended:
                ended = True
                await up.close()
                outcome.done(up, status)
                release()

        async def sse() -> AsyncIterator[bytes]:
            started: set[int] = set()
            try:
                async for data in up.chunks():
                    outcome.saw(data)
                    for c in data.get("choices", ()):
                        i = c["index"]
                        yield oai.sse(oai.chunk(rid, model, i, c.get("text"), c.get("finish_reason"), chat,
                                                first=i not in started))
                        started.add(i)
                if body.include_usage and outcome.usage:
                    yield oai.sse(oai.usage_chunk(rid, model, outcome.usage, chat))
                await end("ok")
            except (httpx.HTTPError, WorkerDown, WorkerFailed, ValueError) as err:
                metrics.cut.inc()
                log.warning("stream cut", extra={"fields": {"request_id": rid, "worker": up.worker,
                                                            "error": str(err) or type(err).__name__}})
                pool.mark_failed(up.worker)
                await end("worker_failed")
                yield oai.sse(oai.APIError(502, "the worker failed mid-stream", "server_error").body())
            yield oai.sse("[DONE]")

        return _Stream(sse(), lambda: end("client_gone"), headers=route_header(up.decision))

    async def handle(prompt: list[int], body, chat: bool):
        max_tokens = max_tokens_for(len(prompt), body.max_new_tokens() if chat else body.max_tokens,
                                    cfg.max_model_len, cfg.default_max_tokens)
        rid = oai.new_id("chatcmpl" if chat else "cmpl")
        start = time.monotonic()
        fwd = worker_body(prompt, body, max_tokens)
        admission.enter(len(prompt))
        released = streaming = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                admission.leave(len(prompt))

        try:
            if body.stream:
                resp = await answer_stream(prompt, body, fwd, rid, chat, start, release)
                streaming = True  # released when the stream ends
                return resp
            return await answer_whole(prompt, body, fwd, rid, chat, start)
        except WorkerRejected as err:
            metrics.requests.labels("rejected").inc()
            headers = {"Retry-After": err.retry_after} if err.retry_after else None
            return Response(err.body, status_code=err.status, media_type="application/json", headers=headers)
        finally:
            if not streaming:
                release()

    @app.post("/v1/completions")
    async def completions(body: oai.CompletionRequest):
        check_model(body.model, cfg.served_model_name)
        prompt = body.prompt_value()
        ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if any(t < 0 or t >= len(tokenizer) for t in ids):
            raise oai.APIError(400, f"prompt token ids must be in [0, {len(tokenizer)})", param="prompt")
        return await handle(ids, body, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: oai.ChatCompletionRequest):
        check_model(body.model, cfg.served_model_name)
        try:
            ids = tokenizer.apply_chat_template(body.chat(), add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
        except Exception as err:  # content parts or a template that rejects the conversation
            raise oai.APIError(400, f"bad messages: {err}", param="messages") from None
        return await handle(ids, body, chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": cfg.served_model_name, "object": "model",
                                            "owned_by": "preble", "max_model_len": cfg.max_model_len}]}

    @app.get("/health")
    async def health():
        healthy = [w.worker_id for w in pool.healthy()]
        status = 200 if healthy else 503
        return JSONResponse({"status": "ok" if healthy else "unavailable", "healthy_workers": healthy,
                             "workers": len(pool.workers), "policy": policy.name}, status_code=status)

    def worker_entry(w) -> dict:
        info = policy.worker_info(w.worker_id)
        return {"worker_id": w.worker_id, "url": w.url, "healthy": w.healthy, "cached_pages": info.cached_pages,
                "kv_events": None if info.kv_events is None else {"state": info.kv_events, "note": info.kv_events_note},
                "load": None if w.load is None else msgspec.to_builtins(w.load)}

    @app.get("/workers")
    async def workers():
        return [worker_entry(w) for w in pool.workers.values()]

    @app.get("/routes")
    async def routes(limit: int = 100):
        return list(decisions)[-max(0, min(limit, cfg.recent_decisions)):]

    def decode(tokens: list[int]) -> str:
        return tokenizer.decode(tokens, skip_special_tokens=False)

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page():
        return HTMLResponse(DASHBOARD_PAGE)

    @app.get("/dashboard/api/replicas")
    async def dashboard_replicas():
        return {"policy": policy.name, "replicas": dash.replicas(pool, policy)}

    @app.get("/dashboard/api/prefixes")
    async def dashboard_prefixes(limit: int = 20):
        return dash.hot_prefixes(policy, decode, cfg.dashboard, max(0, limit))

    @app.get("/dashboard/api/decisions")
    async def dashboard_decisions(limit: int = 50):
        return {"decisions": list(decisions)[-max(0, min(limit, cfg.dashboard.max_decisions)):][::-1]}

    @app.get("/dashboard/api/timeline")
    async def dashboard_timeline():
        return {"bucket_s": cfg.dashboard.bucket_s, "series": timeline.series()}

    @app.get("/metrics")
    async def prometheus():
        metrics.refresh(pool, policy, admission)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
