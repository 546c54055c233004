"""A worker's HTTP frontend: OpenAI and SGLang-style endpoints, load, KV events and metrics.

The frontend tokenises text prompts and applies chat templates itself; a router sends token ids,
so routed requests are never re-tokenised here. Generation happens in the engine process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from transformers import AutoTokenizer

from ..http import openai as oai
from ..http.errors import check_model, checked_token_ids, install_error_handlers, max_tokens_for
from ..http.fast_json import parse_bodies_with_msgspec
from ..http.limits import Admission, Guard
from ..http.logs import REQUEST_ID_HEADER
from ..http.streams import EventStream
from ..http.timing import wants_timing
from .config import FrontendConfig
from .engine_client import EngineClient
from .generation import Generator
from .metrics import WorkerMetrics


def create_worker_app(cfg: FrontendConfig, client: EngineClient) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    metrics = WorkerMetrics(cfg.worker_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(client.run())
        yield
        client.shutdown()
        task.cancel()

    app = FastAPI(title="Preble worker", lifespan=lifespan)
    parse_bodies_with_msgspec(app)
    app.add_middleware(Guard, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes)
    admission = Admission(cfg.max_inflight, cfg.max_inflight_tokens, cfg.retry_after_s)
    generator = Generator(client, tokenizer, admission, metrics, cfg.served_model_name, time.monotonic)

    install_error_handlers(app)

    def encode_text(text: str) -> list[int]:
        return tokenizer.encode(text)

    def encode_chat(messages: list[dict]) -> list[int]:
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        except Exception as err:  # a template may reject a conversation (e.g. role order)
            raise oai.APIError(400, f"chat template failed: {err}", param="messages") from None

    def request_id(request: Request, prefix: str) -> str:
        """The router's id for the request (so both logs name it alike), else a new one."""
        given = request.headers.get(REQUEST_ID_HEADER, "")
        return given if 0 < len(given) <= 128 and given.isprintable() else oai.new_id(prefix)

    @app.post("/v1/completions")
    async def completions(body: oai.CompletionRequest, request: Request):
        received = wants_timing(request.headers)
        check_model(body.model, cfg.served_model_name)
        prompt = body.prompt_value()
        ids = checked_token_ids(encode_text(prompt) if isinstance(prompt, str) else prompt, cfg.vocab_size, "prompt")
        max_tokens = max_tokens_for(len(ids), body.max_tokens, cfg.max_model_len, cfg.default_max_tokens)
        return await generator.openai(request_id(request, "cmpl"), ids, body, max_tokens, chat=False,
                                      received=received)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: oai.ChatCompletionRequest, request: Request):
        received = wants_timing(request.headers)
        check_model(body.model, cfg.served_model_name)
        try:
            messages = body.chat()
        except ValueError as err:
            raise oai.APIError(400, str(err), param="messages") from None
        ids = encode_chat(messages)
        max_tokens = max_tokens_for(len(ids), body.max_new_tokens(), cfg.max_model_len, cfg.default_max_tokens)
        return await generator.openai(request_id(request, "chatcmpl"), ids, body, max_tokens, chat=True,
                                      received=received)

    @app.post("/generate")
    async def generate(body: oai.GenerateRequest):
        ids = checked_token_ids(encode_text(body.text) if body.text is not None else body.input_ids, cfg.vocab_size,
                                "input_ids")
        sampling = body.sampling(cfg.default_max_tokens)
        max_tokens_for(len(ids), sampling.max_tokens, cfg.max_model_len, cfg.default_max_tokens)
        return await generator.sglang(body.rid or oai.new_id("gen"), ids, sampling, body.stream)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": cfg.served_model_name, "object": "model",
                                            "owned_by": "preble", "max_model_len": cfg.max_model_len}]}

    def engine_alive() -> bool:
        """Heard from lately: an engine inside a step says nothing until the step ends, so one
        with requests in flight gets the longer limit."""
        if client.load is None:
            return False
        silent = time.monotonic() - client.last_heard
        return silent < (cfg.busy_engine_timeout_s if client.busy else cfg.health_timeout_s)

    @app.get("/health")
    async def health():
        if engine_alive():
            return {"status": "ok", "worker_id": cfg.worker_id}
        return JSONResponse({"status": "unavailable", "worker_id": cfg.worker_id}, status_code=503)

    @app.get("/load")
    async def load():
        """The engine's last report; 503 while it is not running, so a router routes around it."""
        if not engine_alive():
            raise oai.APIError(503, "engine not running", "unavailable")
        return Response(msgspec.json.encode(client.load), media_type="application/json")

    @app.get("/kv_events")
    async def kv_events():
        """Newline-delimited JSON: a resync batch, then every batch in sequence."""
        async def lines() -> AsyncIterator[bytes]:
            async for batch in client.kv_events():
                yield msgspec.json.encode(batch) + b"\n"
        return EventStream(lines(), media_type="application/x-ndjson")

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(client), media_type=CONTENT_TYPE_LATEST)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info():
        return {"model_path": cfg.model_path, "served_model_name": cfg.served_model_name,
                "is_generation": True}

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info():
        """SGLang's names; routers in front of SGLang workers learn the model from these."""
        return {"worker_id": cfg.worker_id, "model_path": cfg.model_path,
                "served_model_name": cfg.served_model_name, "max_model_len": cfg.max_model_len,
                "load": json.loads(msgspec.json.encode(client.load)) if client.load else None}

    @app.post("/flush_cache")
    async def flush_cache():
        """Drop the prefix cache and windowed statistics, so the next run starts cold (SGLang's
        endpoint of the same name; sglang-router's /flush_cache calls it on every worker)."""
        if not engine_alive():
            raise oai.APIError(503, "engine not ready", "unavailable")
        try:
            error = await asyncio.wait_for(client.flush_cache(), cfg.health_timeout_s)
        except TimeoutError:
            raise oai.APIError(503, "the engine did not answer", "unavailable") from None
        if error is not None:
            raise oai.APIError(400, f"cache not flushed: {error}")
        return {"status": "ok", "worker_id": cfg.worker_id}

    return app
