"""The router's HTTP shell: OpenAI endpoints in front of N workers.

It tokenises once (chat template included) and hands the request to the `Forwarder`, which asks
the routing policy for a worker, forwards the token ids to that worker's `/v1/completions` as a
stream, and relays the answer in the shape the client asked for (every response carries the
routing decision in `x-preble-route`). Admission is bounded (429 beyond it), bodies are capped,
and an API key can be required. The operator's pages are `/workers`, `/routes`, `/metrics` and
the dashboard (`dashboard_routes`).
"""

from __future__ import annotations

import contextlib
import time

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from transformers import AutoTokenizer

from ..core.routing.base import RoutingPolicy
from ..http import openai as oai
from ..http.errors import check_model, checked_token_ids, install_error_handlers
from ..http.fast_json import parse_bodies_with_msgspec
from ..http.limits import Admission, Guard
from ..http.timing import wants_timing
from .config import RouterConfig
from .dashboard import Timeline
from .dashboard_routes import dashboard_routes
from .forwarder import Forwarder
from .metrics import RouterMetrics
from .workers import WorkerHandle, WorkerPool


def create_router_app(cfg: RouterConfig, worker_urls: list[str], policy: RoutingPolicy) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    metrics = RouterMetrics()
    pool = WorkerPool(worker_urls, policy, cfg.pool, api_key=cfg.worker_api_key,
                      on_failure=lambda component: metrics.failures.labels(component).inc())
    admission = Admission(cfg.max_inflight, cfg.max_inflight_tokens, cfg.retry_after_s)
    timeline = Timeline(cfg.dashboard, time.time)
    forwarder = Forwarder(cfg, pool, policy, metrics, admission, timeline)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.start()
        yield
        await pool.stop()

    app = FastAPI(title="Preble router", lifespan=lifespan)
    parse_bodies_with_msgspec(app)
    app.state.pool = pool
    app.add_middleware(Guard, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes,
                       open_paths=frozenset({"/health", "/dashboard"}))  # the page holds no data
    install_error_handlers(app)

    @app.post("/v1/completions")
    async def completions(body: oai.CompletionRequest, request: Request):
        received = wants_timing(request.headers)
        check_model(body.model, cfg.served_model_name)
        prompt = body.prompt_value()
        ids = checked_token_ids(tokenizer.encode(prompt) if isinstance(prompt, str) else prompt, len(tokenizer), "prompt")
        return await forwarder.handle(ids, body, chat=False, received=received)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: oai.ChatCompletionRequest, request: Request):
        received = wants_timing(request.headers)
        check_model(body.model, cfg.served_model_name)
        try:
            ids = tokenizer.apply_chat_template(body.chat(), add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
        except Exception as err:  # content parts or a template that rejects the conversation
            raise oai.APIError(400, f"bad messages: {err}", param="messages") from None
        return await forwarder.handle(ids, body, chat=True, received=received)

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

    def worker_entry(w: WorkerHandle) -> dict:
        info = policy.worker_info(w.worker_id)
        return {"worker_id": w.worker_id, "url": w.url, "healthy": w.healthy, "cached_pages": info.cached_pages,
                "kv_events": None if info.kv_events is None else {"state": info.kv_events, "note": info.kv_events_note},
                "load": None if w.load is None else msgspec.to_builtins(w.load)}

    @app.get("/workers")
    async def workers():
        return [worker_entry(w) for w in pool.workers.values()]

    @app.get("/routes")
    async def routes(limit: int = 100):
        return list(forwarder.decisions)[-max(0, min(limit, cfg.recent_decisions)):]

    @app.get("/metrics")
    async def prometheus():
        metrics.refresh(pool, policy, admission)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(dashboard_routes(cfg.dashboard, pool, policy, forwarder.decisions, timeline,
                                        lambda tokens: tokenizer.decode(tokens, skip_special_tokens=False)))
    return app
