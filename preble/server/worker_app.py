"""A worker's HTTP frontend: OpenAI and SGLang-style endpoints, load, KV events and metrics.

The frontend tokenises text prompts and applies chat templates itself; a router sends token ids,
so routed requests are never re-tokenised here. Generation happens in the engine process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from transformers import AutoTokenizer

from ..core.sampling_params import SamplingParams
from . import openai_protocol as oai
from .config import FrontendConfig
from .engine_client import EngineClient
from .http_common import (
    LATENCY_BUCKETS,
    TPOT_BUCKETS,
    Admission,
    Guard,
    check_model,
    install_error_handlers,
    max_tokens_for,
)
from .logs import REQUEST_ID_HEADER
from .protocol import TokenDelta

log = logging.getLogger("preble.worker")


@dataclass
class Run:
    """One engine request in flight: its delta stream, first delta, and timings."""

    request_id: str
    stream: AsyncIterator[TokenDelta]
    first: TokenDelta
    begin: float
    first_at: float


class WorkerMetrics:
    def __init__(self, worker_id: str) -> None:
        self.registry = CollectorRegistry()
        r, labels = self.registry, ["worker"]
        self.requests = Counter("preble_worker_requests", "Requests by outcome", labels + ["status"], registry=r)
        self.ttft = Histogram("preble_worker_ttft_seconds", "Time to first token", labels,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("preble_worker_e2e_seconds", "Request latency", labels,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("preble_worker_tpot_seconds", "Time per output token after the first", labels,
                              buckets=TPOT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("preble_worker_prompt_tokens", "Prompt tokens", labels, registry=r)
        self.cached_tokens = Counter("preble_worker_cached_tokens", "Prompt tokens served from cache",
                                     labels, registry=r)
        self.output_tokens = Counter("preble_worker_output_tokens", "Generated tokens", labels, registry=r)
        self.gauges = {name: Gauge(f"preble_worker_{name}", doc, labels, registry=r) for name, doc in [
            ("running", "Requests in the running batch"), ("waiting", "Requests waiting for admission"),
            ("kv_usage", "Share of KV pages in use"), ("hit_ratio", "Windowed prefix-cache hit ratio"),
            ("windowed_tpot_seconds", "Windowed time per output token")]}
        self.worker = worker_id

    def finished(self, request_id: str, status: str, start: float, first: float | None,
                 last: TokenDelta | None) -> None:
        """Count one finished engine request and log it (its id is the router's, when routed)."""
        w, end = self.worker, time.monotonic()
        self.requests.labels(w, status).inc()
        if first is not None:
            self.ttft.labels(w).observe(first - start)
        fields = {"request_id": request_id, "worker": w, "status": status}
        if last is not None:
            self.e2e.labels(w).observe(end - start)
            self.prompt_tokens.labels(w).inc(last.prompt_tokens)
            self.cached_tokens.labels(w).inc(last.cached_tokens)
            self.output_tokens.labels(w).inc(last.output_tokens)
            if first is not None and last.output_tokens > 1:
                self.tpot.labels(w).observe((end - first) / (last.output_tokens - 1))
            fields.update(prompt_tokens=last.prompt_tokens, cached_tokens=last.cached_tokens,
                          output_tokens=last.output_tokens, latency=round(end - start, 6))
        if first is not None:
            fields["ttft"] = round(first - start, 6)
        log.info("request", extra={"fields": fields})

    def render(self, client: EngineClient) -> bytes:
        load = client.load
        if load is not None:
            g, w = self.gauges, self.worker
            g["running"].labels(w).set(load.running)
            g["waiting"].labels(w).set(load.waiting)
            g["kv_usage"].labels(w).set((load.kv_used_pages - load.kv_evictable_pages) / load.kv_total_pages)
            g["hit_ratio"].labels(w).set(load.hit_ratio)
            g["windowed_tpot_seconds"].labels(w).set(load.tpot)
        return generate_latest(self.registry)


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
    app.add_middleware(Guard, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes)
    admission = Admission(cfg.max_inflight, cfg.max_inflight_tokens, cfg.retry_after_s)

    install_error_handlers(app)

    def encode_text(text: str) -> list[int]:
        return tokenizer.encode(text)

    def encode_chat(messages: list[dict]) -> list[int]:
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        except Exception as err:  # a template may reject a conversation (e.g. role order)
            raise oai.APIError(400, f"chat template failed: {err}", param="messages") from None

    async def admitted(request_id: str, prompt: list[int], sampling: SamplingParams) -> AsyncIterator[TokenDelta]:
        """The engine's deltas for one request, counted against admission while it runs."""
        admission.enter(len(prompt))
        try:
            async for delta in client.generate(request_id, prompt, sampling):
                yield delta
        finally:
            admission.leave(len(prompt))

    async def start(request_id: str, prompt: list[int], sampling: SamplingParams) -> Run:
        """Submit and wait for the first delta, so refusals become a 400 before any streaming
        (the sampling parameters were checked when the request was read)."""
        begin = time.monotonic()
        stream = admitted(request_id, prompt, sampling)
        first = await anext(stream)
        if first.error is not None:
            metrics.finished(request_id, "rejected", begin, None, None)
            raise oai.APIError(400, first.error)
        return Run(request_id, stream, first, begin, time.monotonic())

    async def run_choices(rid: str, prompt: list[int], body, max_tokens: int) -> list[Run]:
        runs: list[Run] = []
        try:
            for i in range(body.n):
                runs.append(await start(rid if body.n == 1 else f"{rid}.{i}", prompt, body.sampling(max_tokens, i)))
        except BaseException:
            for run in runs:
                await run.stream.aclose()
            raise
        return runs

    async def drain(run: Run) -> tuple[str, TokenDelta]:
        text, last = run.first.text, run.first
        status = "error"
        try:
            async for delta in run.stream:
                text += delta.text
                last = delta
            status = "ok"
            return text, last
        finally:
            metrics.finished(run.request_id, status, run.begin, run.first_at, last)

    def request_id(request: Request, prefix: str) -> str:
        """The router's id for the request (so both logs name it alike), else a new one."""
        given = request.headers.get(REQUEST_ID_HEADER, "")
        return given if 0 < len(given) <= 128 and given.isprintable() else oai.new_id(prefix)

    async def respond(request: Request, prompt: list[int], body, max_tokens: int, chat: bool):
        rid, model = request_id(request, "chatcmpl" if chat else "cmpl"), cfg.served_model_name
        runs = await run_choices(rid, prompt, body, max_tokens)
        if not body.stream:
            results = [await drain(run) for run in runs]
            last = [r[1] for r in results]
            use = oai.usage(len(prompt), sum(d.output_tokens for d in last), last[0].cached_tokens)
            choices = [oai.choice(i, text, oai.finish_reason_openai(d.finish_reason), chat)
                       for i, (text, d) in enumerate(results)]
            return JSONResponse(oai.completion_body(rid, model, choices, use, chat))
        return StreamingResponse(stream_choices(runs, rid, model, prompt, body, chat),
                                 media_type="text/event-stream")

    async def stream_choices(runs, rid, model, prompt, body, chat) -> AsyncIterator[bytes]:
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, run: Run) -> None:
            status, last = "error", run.first
            try:
                await merged.put((index, run.first))
                async for delta in run.stream:
                    last = delta
                    await merged.put((index, delta))
                status = "ok"
            finally:
                metrics.finished(run.request_id, status, run.begin, run.first_at, last)
                await merged.put((index, None))

        tasks = [asyncio.create_task(pump(i, run)) for i, run in enumerate(runs)]
        finals: dict[int, TokenDelta] = {}
        started: set[int] = set()
        try:
            open_streams = len(runs)
            while open_streams:
                index, delta = await merged.get()
                if delta is None:
                    open_streams -= 1
                    continue
                reason = oai.finish_reason_openai(delta.finish_reason)
                if delta.text or reason or index not in started:
                    yield oai.sse(oai.chunk(rid, model, index, delta.text, reason, chat, index not in started))
                    started.add(index)
                if delta.finish_reason is not None:
                    finals[index] = delta
            if body.include_usage and finals:
                use = oai.usage(len(prompt), sum(d.output_tokens for d in finals.values()),
                                next(iter(finals.values())).cached_tokens)
                yield oai.sse(oai.usage_chunk(rid, model, use, chat))
            yield oai.sse("[DONE]")
        finally:
            for task in tasks:
                task.cancel()

    @app.post("/v1/completions")
    async def completions(body: oai.CompletionRequest, request: Request):
        check_model(body.model, cfg.served_model_name)
        prompt = body.prompt_value()
        ids = encode_text(prompt) if isinstance(prompt, str) else list(prompt)
        return await respond(request, ids, body, max_tokens_for(len(ids), body.max_tokens, cfg.max_model_len,
                                                                cfg.default_max_tokens), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: oai.ChatCompletionRequest, request: Request):
        check_model(body.model, cfg.served_model_name)
        try:
            messages = body.chat()
        except ValueError as err:
            raise oai.APIError(400, str(err), param="messages") from None
        ids = encode_chat(messages)
        return await respond(request, ids, body, max_tokens_for(len(ids), body.max_new_tokens(),
                                                                cfg.max_model_len, cfg.default_max_tokens), chat=True)

    @app.post("/generate")
    async def generate(body: oai.GenerateRequest):
        ids = encode_text(body.text) if body.text is not None else list(body.input_ids)
        sampling = body.sampling(cfg.default_max_tokens)
        max_tokens_for(len(ids), sampling.max_tokens, cfg.max_model_len, cfg.default_max_tokens)
        rid = body.rid or oai.new_id("gen")
        run = await start(rid, ids, sampling)
        stream, first = run.stream, run.first

        def payload(text: str, d: TokenDelta, ids_out: list[int]) -> dict:
            reason = None if d.finish_reason is None else {"type": d.finish_reason}
            return {"text": text, "output_ids": ids_out, "meta_info": {
                "id": rid, "prompt_tokens": d.prompt_tokens, "completion_tokens": d.output_tokens,
                "cached_tokens": d.cached_tokens, "finish_reason": reason}}

        if not body.stream:
            text, out_ids, last = first.text, list(first.token_ids), first
            async for d in stream:
                text, last = text + d.text, d
                out_ids += d.token_ids
            metrics.finished(run.request_id, "ok", run.begin, run.first_at, last)
            return JSONResponse(payload(text, last, out_ids))

        async def sse_stream() -> AsyncIterator[bytes]:
            text, out_ids, last = first.text, list(first.token_ids), first
            yield oai.sse(payload(text, first, out_ids))
            async for d in stream:
                text, last = text + d.text, d
                out_ids += d.token_ids
                yield oai.sse(payload(text, d, out_ids))
            metrics.finished(run.request_id, "ok", run.begin, run.first_at, last)
            yield oai.sse("[DONE]")

        return StreamingResponse(sse_stream(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": cfg.served_model_name, "object": "model",
                                            "owned_by": "preble", "max_model_len": cfg.max_model_len}]}

    def engine_alive() -> bool:
        return client.load is not None and time.monotonic() - client.last_heard < cfg.health_timeout_s

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
        return StreamingResponse(lines(), media_type="application/x-ndjson")

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
