"""The router keeps its connections to a worker: one answer after another, streamed or whole, goes
over the same connection (a dropped one makes the next request wait for a new one, and at high
request rates leaves the host's ports in TIME_WAIT)."""

from __future__ import annotations

import httpx
import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from preble.router.config import RouterServerConfig
from preble.router.server import build_router_app

from .inproc import fake_worker_app, serve_app
from .polling import wait_for

PAGE = 4


def streaming_worker(worker_id: str, client_ports: list[int]) -> FastAPI:
    """A worker that answers every completion with two text chunks, usage and [DONE], and
    records the client port each completion came from (one port per connection)."""
    app = fake_worker_app(worker_id, PAGE)

    @app.post("/v1/completions")
    async def completions(request: Request):
        client_ports.append(request.client.port)
        body = await request.json()

        async def events():
            for text, reason in (("a", None), ("b", "length")):
                chunk = {"id": "x", "object": "text_completion", "created": 0, "model": "m",
                         "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}
                yield b"data: " + msgspec.json.encode(chunk) + b"\n\n"
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": 2,
                     "total_tokens": len(body["prompt"]) + 2, "prompt_tokens_details": {"cached_tokens": 0}}
            yield b"data: " + msgspec.json.encode({"id": "x", "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def answer_text(resp: httpx.Response, streamed: bool) -> str:
    if not streamed:
        return resp.json()["choices"][0]["text"]
    events = [line[len("data: "):] for line in resp.text.splitlines() if line.startswith("data: {")]
    return "".join(c["text"] for e in events for c in msgspec.json.decode(e)["choices"])


def test_answers_one_after_another_reuse_the_workers_connection(tiny_models):
    ports: list[int] = []
    with serve_app(streaming_worker("w0", ports)) as worker:
        cfg = RouterServerConfig(model=tiny_models("llama"), workers=[worker], policy="round_robin")
        with serve_app(build_router_app(cfg)) as router:
            wait_for(lambda: httpx.get(f"{router}/health").status_code == 200, 10.0, step_s=0.02)
            with httpx.Client(timeout=30) as client:
                for i in range(6):
                    body = {"prompt": [5, 6, 7, i + 8], "max_tokens": 2, "stream": i % 2 == 0}
                    resp = client.post(f"{router}/v1/completions", json=body)
                    assert resp.status_code == 200, resp.text
                    assert answer_text(resp, streamed=body["stream"]) == "ab"
    assert len(ports) == 6
    assert len(set(ports)) == 1, ports
