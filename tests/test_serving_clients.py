"""The serving benchmark's client pool against a stub OpenAI server: a batch split over client
processes comes back whole, in the shape the benchmark reads, and a request the server fails is
reported with how it failed instead of ending the batch."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from preble.bench.serving_clients import ClientPool

from .inproc import serve_app

FAILING_FIRST_TOKEN = 13  # prompts starting with this id get a 500


def stub_server() -> FastAPI:
    """Completions of `max_tokens` tokens whose text repeats the prompt's first id, streamed or not."""
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        first, n = body["prompt"][0], body["max_tokens"]
        if first == FAILING_FIRST_TOKEN:
            return JSONResponse({"error": {"message": "stub failure"}}, status_code=500)
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n,
                 "prompt_tokens_details": {"cached_tokens": 0}}
        if not body["stream"]:
            return {"choices": [{"index": 0, "text": f"{first} " * n}], "usage": usage}

        async def events():
            for _ in range(n):
                yield f'data: {{"choices": [{{"index": 0, "text": "{first} "}}]}}\n\n'
            yield f'data: {{"choices": [], "usage": {json.dumps(usage)}}}\n\n'
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def test_a_batch_split_over_processes_comes_back_whole_with_its_failures():
    prompts = [[first, 1, 2] for first in (5, 6, FAILING_FIRST_TOKEN, 7, 8)]
    with serve_app(stub_server()) as url:
        pool = ClientPool(url, "stub", processes=2, limit=len(prompts))
        try:
            for stream in (True, False):
                start, answers, client_cpu = pool.run(prompts, max_tokens=4, stream=stream)
                results = [a for a in answers if isinstance(a, dict)]
                failures = [a for a in answers if isinstance(a, str)]
                assert len(results) == 4 and len(failures) == 1
                assert failures[0].startswith("HTTPStatusError") and "500" in failures[0]
                assert all(r["usage"]["completion_tokens"] == 4 and r["sent"] >= start for r in results)
                if stream:
                    assert all(r["events"] == 4 + 2 and r["first"] <= r["end"] for r in results)
                assert client_cpu >= 0
        finally:
            pool.close()
    assert all(not proc.is_alive() for proc in pool.procs)
