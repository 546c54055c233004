"""The frontend's side of the engine IPC: submit, abort, and fan engine output out to waiters."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import zmq
import zmq.asyncio

from ..core.messages import KVEventBatch, LoadReport
from ..core.sampling_params import SamplingParams
from . import protocol as P

log = logging.getLogger(__name__)


class EngineClient:
    def __init__(self, in_addr: str, out_addr: str, subscriber_queue: int) -> None:
        ctx = zmq.asyncio.Context.instance()
        self._to_engine = ctx.socket(zmq.PUSH)
        self._to_engine.connect(in_addr)
        self._from_engine = ctx.socket(zmq.PULL)
        self._from_engine.connect(out_addr)
        self._queues: dict[str, asyncio.Queue[P.TokenDelta]] = {}
        self._subscribers: set[asyncio.Queue[KVEventBatch | None]] = set()
        self._subscriber_queue = subscriber_queue
        self._flushes: collections.deque[asyncio.Future[str | None]] = collections.deque()
        self.load: LoadReport | None = None
        self.last_heard = 0.0  # monotonic time of the engine's last message

    async def run(self) -> None:
        """Dispatch engine output until cancelled."""
        while True:
            msg = P.from_engine_decoder.decode(await self._from_engine.recv())
            self.last_heard = time.monotonic()
            match msg:
                case P.StepOutputs():
                    for delta in msg.deltas:
                        queue = self._queues.get(delta.request_id)
                        if queue is not None:
                            queue.put_nowait(delta)
                case P.Load():
                    self.load = msg.report
                case P.Events():
                    self._publish(msg.batch)
                case P.Flushed():
                    if self._flushes:  # answers come in the order of the asks
                        done = self._flushes.popleft()
                        if not done.done():  # its asker may have given up waiting
                            done.set_result(msg.error)

    @property
    def busy(self) -> bool:
        """Requests are in flight in the engine."""
        return bool(self._queues)

    def _publish(self, batch: KVEventBatch) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(batch)
            except asyncio.QueueFull:  # a subscriber that lags is cut off; it resyncs on reconnect
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

    def _send(self, msg: P.ToEngine) -> None:
        self._to_engine.send(P.to_engine_encoder.encode(msg))

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       sampling: SamplingParams) -> AsyncIterator[P.TokenDelta]:
        """Deltas of one request until its last; leaving early (a client disconnect) aborts it.
        A reader that falls behind the engine gets what queued up meanwhile as one delta, so a
        loaded frontend sends fewer, larger events instead of lagging further."""
        queue: asyncio.Queue[P.TokenDelta] = asyncio.Queue()
        self._queues[request_id] = queue
        done = False
        try:
            self._send(P.Generate(request_id, prompt_token_ids, sampling))
            while not done:
                delta = await queue.get()
                while not queue.empty():
                    delta = delta.then(queue.get_nowait())
                done = delta.finish_reason is not None
                yield delta
        finally:
            self._queues.pop(request_id, None)
            if not done:
                self._send(P.Abort(request_id))

    async def kv_events(self) -> AsyncIterator[KVEventBatch]:
        """A full resync, then every later batch in order; ends if this subscriber falls behind."""
        queue: asyncio.Queue[KVEventBatch | None] = asyncio.Queue(self._subscriber_queue)
        self._subscribers.add(queue)
        try:
            self._send(P.DumpCache())
            base = None
            while True:
                batch = await queue.get()
                if batch is None:
                    return
                if base is None:
                    if batch.resync:
                        base = batch.seq
                        yield batch
                elif not batch.resync and batch.seq > base:
                    yield batch
        finally:
            self._subscribers.discard(queue)

    async def flush_cache(self) -> str | None:
        """Ask the engine to drop its prefix cache; None when done, else why not."""
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._flushes.append(done)
        self._send(P.FlushCache())
        return await done

    def shutdown(self) -> None:
        self._send(P.Shutdown())
