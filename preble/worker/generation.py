"""Running one HTTP request on the engine: admission, n choices, and the answer as one JSON body
or as a stream of server-sent events, in OpenAI's shape or SGLang's `/generate` shape.

A request is submitted and its first delta awaited before any answer starts, so that what the
engine refuses becomes a 400 rather than a broken stream. Every engine request is counted once
in the metrics, however it ends. The engine sends token ids; their text is made here.

A request that asks for timing (the router's `x-preble-timing` header) gets, in its usage chunk
or body, when each hop saw it: `worker_received`, `engine_admitted`, `engine_first_token`,
`worker_first_sent` (wall-clock seconds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from ..core.sampling_params import SamplingParams
from ..http import openai as oai
from ..http.limits import Admission
from ..http.streams import EventStream
from .engine_client import EngineClient
from .metrics import RequestStatus, WorkerMetrics
from .protocol import TokenDelta
from .text import IncrementalText


@dataclass
class Run:
    """One engine request in flight: its delta stream, first delta, text and timings."""

    request_id: str
    stream: AsyncIterator[TokenDelta]
    first: TokenDelta
    text: IncrementalText
    begin: float
    first_at: float
    timing: dict[str, float | None] | None  # per-hop times, when the request asked for them


@dataclass
class Output:
    """A finished run: its text, its token ids and its last delta (the counts)."""

    text: str
    token_ids: list[int]
    last: TokenDelta


class Generator:
    """Submits requests to the engine on behalf of the endpoints and shapes their answers."""

    def __init__(self, client: EngineClient, tokenizer, admission: Admission, metrics: WorkerMetrics,
                 served_model_name: str, clock) -> None:
        self.client, self.tokenizer, self.admission, self.metrics = client, tokenizer, admission, metrics
        self.model, self.clock = served_model_name, clock

    async def _admitted(self, request_id: str, prompt: list[int],
                        sampling: SamplingParams) -> AsyncIterator[TokenDelta]:
        """The engine's deltas for one request, counted against admission while it runs."""
        self.admission.enter(len(prompt))
        try:
            async with aclosing(self.client.generate(request_id, prompt, sampling)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            self.admission.leave(len(prompt))

    async def start(self, request_id: str, prompt: list[int], sampling: SamplingParams,
                    received: float | None = None) -> Run:
        """Submit and wait for the first delta; a refusal becomes a 400 (the sampling
        parameters were checked when the request was read). `received`: when the request
        arrived (wall clock), if it asked for per-hop timing."""
        begin = self.clock()
        stream = self._admitted(request_id, prompt, sampling)
        first = await anext(stream)
        if first.error is not None:
            self.metrics.finished(request_id, RequestStatus.REJECTED, begin, None, None)
            raise oai.APIError(400, first.error)
        timing = None if received is None else {
            "worker_received": received, "engine_admitted": first.admitted_at,
            "engine_first_token": first.first_token_at, "worker_first_sent": None}
        text = IncrementalText(self.tokenizer, sampling.stop, sampling.skip_special_tokens)
        return Run(request_id, stream, first, text, begin, self.clock(), timing)

    async def _start_choices(self, rid: str, prompt: list[int], body, max_tokens: int,
                             received: float | None) -> list[Run]:
        runs: list[Run] = []
        try:
            for i in range(body.n):
                runs.append(await self.start(rid if body.n == 1 else f"{rid}.{i}", prompt,
                                             body.sampling(max_tokens, i), received))
        except BaseException:
            for run in runs:
                await run.stream.aclose()
            raise
        return runs

    async def _deltas(self, run: Run) -> AsyncIterator[tuple[str, TokenDelta]]:
        """All of a run's deltas, the first included, each with its new text. Closing it early
        (a client gone) closes the engine request; either way the run is counted in the metrics
        once."""
        status, last = RequestStatus.ERROR, run.first
        try:
            yield run.text.add(run.first.token_ids, run.first.finish_reason is not None), run.first
            async for delta in run.stream:
                last = delta
                yield run.text.add(delta.token_ids, delta.finish_reason is not None), delta
            status = RequestStatus.OK
        finally:
            await run.stream.aclose()
            self.metrics.finished(run.request_id, status, run.begin, run.first_at, last)

    async def drain(self, run: Run) -> Output:
        text, ids, last = [], [], run.first
        async with aclosing(self._deltas(run)) as deltas:
            async for piece, delta in deltas:
                text.append(piece)
                ids += delta.token_ids
                last = delta
        if run.timing is not None:
            run.timing["worker_first_sent"] = time.time()
        return Output("".join(text), ids, last)

    async def openai(self, rid: str, prompt: list[int], body, max_tokens: int, chat: bool,
                     received: float | None = None):
        """A completion or chat completion: one body, or a stream of chunks."""
        runs = await self._start_choices(rid, prompt, body, max_tokens, received)
        if body.stream:
            return EventStream(self._openai_stream(runs, rid, len(prompt), body.include_usage, chat))
        outputs = [await self.drain(run) for run in runs]
        use = oai.usage(len(prompt), sum(o.last.output_tokens for o in outputs), outputs[0].last.cached_tokens)
        choices = [oai.choice(i, o.text, oai.finish_reason_openai(o.last.finish_reason), chat)
                   for i, o in enumerate(outputs)]
        answer = oai.completion_body(rid, self.model, choices, use, chat)
        if runs[0].timing is not None:
            answer["timing"] = runs[0].timing
        return JSONResponse(answer)

    async def _openai_stream(self, runs: list[Run], rid: str, prompt_len: int, include_usage: bool,
                             chat: bool) -> AsyncIterator[bytes]:
        """The choices' chunks interleaved as they come, then usage (if asked) and [DONE]."""
        finals: dict[int, TokenDelta] = {}
        started: set[int] = set()
        timing = runs[0].timing
        async with aclosing(_interleaved([self._deltas(run) for run in runs])) as items:
            async for index, piece, delta in items:
                reason = oai.finish_reason_openai(delta.finish_reason)
                if piece or reason or index not in started:
                    if timing is not None and timing["worker_first_sent"] is None:
                        timing["worker_first_sent"] = time.time()
                    yield oai.sse(oai.chunk(rid, self.model, index, piece, reason, chat, index not in started))
                    started.add(index)
                if delta.finish_reason is not None:
                    finals[index] = delta
        if include_usage and finals:
            use = oai.usage(prompt_len, sum(d.output_tokens for d in finals.values()),
                            next(iter(finals.values())).cached_tokens)
            yield oai.sse(oai.usage_chunk(rid, self.model, use, chat, timing))
        yield oai.sse("[DONE]")

    async def sglang(self, rid: str, prompt: list[int], sampling: SamplingParams, stream: bool):
        """SGLang's `/generate`: text and ids so far with `meta_info`, whole or as events."""
        run = await self.start(rid, prompt, sampling)
        if not stream:
            out = await self.drain(run)
            return JSONResponse(_sglang_payload(rid, out.text, out.token_ids, out.last))

        async def events() -> AsyncIterator[bytes]:
            text, ids = "", []
            async with aclosing(self._deltas(run)) as deltas:
                async for piece, delta in deltas:
                    text += piece
                    ids += delta.token_ids
                    yield oai.sse(_sglang_payload(rid, text, ids, delta))
            yield oai.sse("[DONE]")

        return EventStream(events())


async def _interleaved(streams: list[AsyncIterator[tuple[str, TokenDelta]]]
                       ) -> AsyncIterator[tuple[int, str, TokenDelta]]:
    """(choice index, text piece, delta) from every choice's stream as they come. One choice, the
    usual case, is read in place: no task and no queue between the engine's deltas and the
    response, per token."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for piece, delta in only:
                yield 0, piece, delta
        return
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[tuple[str, TokenDelta]]) -> None:
        try:
            async with aclosing(stream) as items:
                async for item in items:
                    await merged.put((index, item))
        finally:
            await merged.put((index, None))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            index, item = await merged.get()
            if item is None:
                open_streams -= 1
                continue
            yield index, *item
    finally:
        for task in tasks:
            task.cancel()


def _sglang_payload(rid: str, text: str, token_ids: list[int], delta: TokenDelta) -> dict:
    reason = None if delta.finish_reason is None else {"type": delta.finish_reason}
    return {"text": text, "output_ids": list(token_ids), "meta_info": {
        "id": rid, "prompt_tokens": delta.prompt_tokens, "completion_tokens": delta.output_tokens,
        "cached_tokens": delta.cached_tokens, "finish_reason": reason}}
