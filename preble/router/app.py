"""The router's HTTP shell: OpenAI endpoints in front of N workers.

It tokenises once (chat template included), asks the routing policy for a worker, forwards the
token ids to that worker's `/v1/completions` as a stream, and relays the answer in the shape the
client asked for. Every response carries the routing decision in `x-preble-route`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from transformers import AutoTokenizer

from ..core.routing.base import RequestDone, RouteDecision, RouteRequest, RoutingPolicy
from ..server import openai_protocol as oai
from ..server.http_common import check_model, install_error_handlers, max_tokens_for
from .workers import WorkerPool, WorkerPoolConfig

log = logging.getLogger("preble.router")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
ROUTE_HEADER = "x-preble-route"


@dataclass(frozen=True)
class RouterConfig:
    model_path: str  # tokenizer and chat template source
    served_model_name: str
    max_model_len: int
    default_max_tokens: int = 256  # for chat requests that give no limit
    max_attempts: int = 3  # workers tried for a request that has not started streaming
    recent_decisions: int = 1000  # routing decisions kept for /routes
    pool: WorkerPoolConfig = WorkerPoolConfig()


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("preble_router_requests", "Requests by outcome", ["status"], registry=r)
        self.branches = Counter("preble_router_route_branch", "Routing decisions by policy branch",
                                ["policy", "branch"], registry=r)
        self.retries = Counter("preble_router_retries", "Requests re-sent to another worker", registry=r)
        self.ttft = Histogram("preble_router_ttft_seconds", "Time to first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.e2e = Histogram("preble_router_e2e_seconds", "Request latency", buckets=LATENCY_BUCKETS,
                             registry=r)
        self.cached = Counter("preble_router_cached_tokens", "Prompt tokens served from worker caches",
                              ["worker"], registry=r)
        self.prompt = Counter("preble_router_prompt_tokens", "Prompt tokens routed", ["worker"], registry=r)


class WorkerRejected(Exception):
    """The worker answered the request with an HTTP error (passed on to the client)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def create_router_app(cfg: RouterConfig, worker_urls: list[str], policy: RoutingPolicy) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    pool = WorkerPool(worker_urls, policy, cfg.pool)
    metrics = RouterMetrics()
    decisions: deque[dict] = deque(maxlen=cfg.recent_decisions)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.start()
        yield
        await pool.stop()

    app = FastAPI(title="Preble router", lifespan=lifespan)
    app.state.pool = pool

    install_error_handlers(app)

    def worker_body(prompt: list[int], body, max_tokens: int) -> dict:
        """The forwarded request: token ids, every sampling field, always streamed with usage."""
        fields = body.model_dump(exclude_none=True, exclude={"model", "messages", "prompt", "max_tokens",
                                                              "max_completion_tokens", "stream", "stream_options",
                                                              "user", "logprobs", "echo"})
        return {**fields, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}

    async def open_stream(prompt: list[int], body, max_tokens: int, rid: str):
        """Route and connect, retrying on other workers until one starts answering."""
        request = RouteRequest(rid, prompt, max_tokens)
        for _ in range(cfg.max_attempts):
            if not pool.healthy():
                raise oai.APIError(503, "no healthy worker", "unavailable")
            decision = policy.route(request)
            worker = pool.workers[decision.worker_id]
            req = pool.client.build_request("POST", f"{worker.url}/v1/completions",
                                            json=worker_body(prompt, body, max_tokens))
            try:
                resp = await pool.client.send(req, stream=True)
            except httpx.HTTPError as err:
                log.warning("request %s: worker %s failed (%s); retrying", rid, decision.worker_id, err)
                pool.mark_failed(decision.worker_id)
                metrics.retries.inc()
                continue
            if resp.status_code != 200:
                content = await resp.aread()
                await resp.aclose()
                policy.on_done(RequestDone(rid, decision.worker_id, len(prompt), 0, 0, 0.0, 0.0, ok=False))
                raise WorkerRejected(resp.status_code, content)
            return decision, resp
        raise oai.APIError(503, f"no worker answered after {cfg.max_attempts} attempts", "unavailable")

    def record(decision: RouteDecision, rid: str) -> dict:
        metrics.branches.labels(policy.name, decision.branch).inc()
        entry = {"request_id": rid, "time": time.time(), "worker": decision.worker_id,
                 "branch": decision.branch, "matched_tokens": decision.matched_tokens,
                 "costs": decision.costs}
        decisions.append(entry)
        log.info("route %s", json.dumps(entry, separators=(",", ":")))
        return entry

    async def relay(resp: httpx.Response) -> AsyncIterator[dict]:
        """Parsed chunks of a worker's completion stream."""
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    return
                yield json.loads(data)
        finally:
            await resp.aclose()

    async def handle(prompt: list[int], body, chat: bool):
        max_tokens = max_tokens_for(len(prompt), body.max_new_tokens() if chat else body.max_tokens,
                                    cfg.max_model_len, cfg.default_max_tokens)
        rid = oai.new_id("chatcmpl" if chat else "cmpl")
        start = time.monotonic()
        try:
            decision, resp = await open_stream(prompt, body, max_tokens, rid)
        except WorkerRejected as err:
            metrics.requests.labels("rejected").inc()
            return Response(err.body, status_code=err.status, media_type="application/json")
        route = record(decision, rid)
        headers = {ROUTE_HEADER: json.dumps({k: route[k] for k in ("worker", "branch", "matched_tokens")},
                                            separators=(",", ":"))}
        state = {"first": None, "usage": None, "ok": False}

        def finish() -> None:
            end = time.monotonic()
            use = state["usage"] or oai.usage(len(prompt), 0, 0)
            ttft = (state["first"] or end) - start
            cached = use["prompt_tokens_details"]["cached_tokens"]
            policy.on_done(RequestDone(rid, decision.worker_id, len(prompt), cached,
                                       use["completion_tokens"], ttft, end - start, ok=state["ok"]))
            metrics.requests.labels("ok" if state["ok"] else "error").inc()
            metrics.ttft.observe(ttft)
            metrics.e2e.observe(end - start)
            metrics.prompt.labels(decision.worker_id).inc(len(prompt))
            metrics.cached.labels(decision.worker_id).inc(cached)

        async def chunks() -> AsyncIterator[dict]:
            try:
                async for data in relay(resp):
                    if data.get("usage"):
                        state["usage"] = data["usage"]
                    if data.get("choices"):
                        if state["first"] is None:
                            state["first"] = time.monotonic()
                        yield data
                state["ok"] = True
            finally:
                finish()

        model = cfg.served_model_name
        if not body.stream:
            texts: dict[int, str] = {}
            reasons: dict[int, str | None] = {}
            try:
                async for data in chunks():
                    for c in data["choices"]:
                        texts[c["index"]] = texts.get(c["index"], "") + (c.get("text") or "")
                        reasons[c["index"]] = c.get("finish_reason") or reasons.get(c["index"])
            except httpx.HTTPError:
                pool.mark_failed(decision.worker_id)
                raise oai.APIError(502, "the worker failed mid-request", "server_error") from None
            choices = [oai.choice(i, texts[i], reasons.get(i), chat) for i in sorted(texts)]
            use = state["usage"] or oai.usage(len(prompt), 0, 0)
            return JSONResponse(oai.completion_body(rid, model, choices, use, chat), headers=headers)

        async def sse() -> AsyncIterator[bytes]:
            started: set[int] = set()
            try:
                async for data in chunks():
                    for c in data["choices"]:
                        i = c["index"]
                        yield oai.sse(oai.chunk(rid, model, i, c.get("text"), c.get("finish_reason"), chat,
                                                first=i not in started))
                        started.add(i)
                if body.include_usage and state["usage"]:
                    yield oai.sse(oai.usage_chunk(rid, model, state["usage"], chat))
            except httpx.HTTPError:
                pool.mark_failed(decision.worker_id)
                yield oai.sse(oai.APIError(502, "the worker failed mid-stream", "server_error").body())
            yield oai.sse("[DONE]")

        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

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

    @app.get("/workers")
    async def workers():
        return [{"worker_id": w.worker_id, "url": w.url, "healthy": w.healthy,
                 "load": None if w.load is None else {f: getattr(w.load, f) for f in w.load.__struct_fields__}}
                for w in pool.workers.values()]

    @app.get("/routes")
    async def routes(limit: int = 100):
        return list(decisions)[-max(0, min(limit, cfg.recent_decisions)):]

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
