"""The engine process: owns the model and runs the step loop; talks to the frontend over ZeroMQ.

It never blocks on HTTP: requests arrive on a PULL socket, and token deltas (one message per
step for every request in it), load reports and KV event batches leave on a PUSH socket. Text is
the frontend's work: between two GPU steps the loop only schedules and sends token ids. When it
has no work it waits on the socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

import msgspec
import zmq

from ..core.kv_events import KVEvent
from ..core.load_report import STATS_WINDOW_S, RequestWindow, build_load_report
from ..core.messages import KVEventBatch, LoadReport
from ..core.request import Request
from ..engine.config import EngineConfig
from ..engine.engine import LLMEngine
from . import protocol as P

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineProcConfig:
    engine: EngineConfig
    worker_id: str
    in_addr: str  # frontend -> engine (we bind PULL)
    out_addr: str  # engine -> frontend (we bind PUSH)
    num_threads: int | None = None  # torch CPU threads; None: torch's default
    load_interval_s: float = 0.2  # how often a load report goes out
    idle_poll_ms: int = 50  # socket wait when there is no work
    send_timeout_ms: int = 500  # a send blocked this long (frontend gone?) checks the parent
    stats_window_s: float = STATS_WINDOW_S  # window of the reported hit ratio and time per output token


class FrontendGone(Exception):
    """The process that started the engine exited."""


class EngineLoop:
    def __init__(self, cfg: EngineProcConfig) -> None:
        self.cfg = cfg
        self._events: list[KVEvent] = []
        self.engine = LLMEngine(cfg.engine, on_kv_event=self._events.append)
        self.stats = RequestWindow(cfg.stats_window_s, time.monotonic)
        self._admitted: dict[str, float] = {}  # wall-clock admission of requests still without a token
        self.seq = 0
        self._last_load = 0.0
        ctx = zmq.Context.instance()
        self.inbox = ctx.socket(zmq.PULL)
        self.inbox.bind(cfg.in_addr)
        self.outbox = ctx.socket(zmq.PUSH)
        self.outbox.setsockopt(zmq.SNDTIMEO, cfg.send_timeout_ms)
        self.outbox.setsockopt(zmq.LINGER, 0)
        self.outbox.bind(cfg.out_addr)
        self._parent = os.getppid()

    def send(self, msg: P.FromEngine) -> None:
        """Send, waiting for the frontend as long as it lives: a PUSH socket with no reader
        blocks, and an engine whose frontend was killed must not wait forever."""
        data = P.from_engine_encoder.encode(msg)
        while True:
            try:
                self.outbox.send(data)
                return
            except zmq.Again:
                if os.getppid() != self._parent:
                    raise FrontendGone from None

    def run(self) -> None:
        while os.getppid() == self._parent:  # exit with the frontend, never orphaned
            timeout = 0 if self.engine.has_work else self.cfg.idle_poll_ms
            if self.inbox.poll(timeout):
                while True:
                    try:
                        raw = self.inbox.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        msg = P.to_engine_decoder.decode(raw)
                    except msgspec.ValidationError:  # the frontend checks what it sends: a bug, loudly
                        log.exception("dropped a message the engine cannot read")
                        continue
                    if not self.handle(msg):
                        return
            if self.engine.has_work:
                self.step()
            self.flush_events()
            now = time.monotonic()
            if now - self._last_load >= self.cfg.load_interval_s:
                self._last_load = now
                self.send(P.Load(self.load_report(now)))

    def handle(self, msg: P.ToEngine) -> bool:
        match msg:
            case P.Generate():
                self.add(msg)
            case P.Abort():
                self.engine.abort(msg.request_id)
                self._admitted.pop(msg.request_id, None)
            case P.DumpCache():
                self.flush_events()
                self.send(P.Events(KVEventBatch(self.cfg.worker_id, self.seq,
                                                list(self.engine.cache.dump_events()), resync=True)))
            case P.FlushCache():
                self.send(P.Flushed(self.flush_cache()))
            case P.Shutdown():
                return False
        return True

    def flush_cache(self) -> str | None:
        """Start cold again: an empty prefix cache (subscribers see CacheCleared) and fresh
        windowed statistics; refused while requests are queued or running."""
        if self.engine.has_work:
            return "requests are in flight"
        self.engine.cache.clear()
        self.flush_events()
        self.stats = RequestWindow(self.cfg.stats_window_s, time.monotonic)
        return None

    def add(self, msg: P.Generate) -> None:
        try:
            self.engine.add_request(msg.prompt_token_ids, msg.sampling, msg.request_id)
        except ValueError as err:
            self.send(P.StepOutputs([P.TokenDelta(msg.request_id, [], len(msg.prompt_token_ids), 0, 0,
                                                  finish_reason="error", error=str(err))]))
            return
        self._admitted[msg.request_id] = time.time()

    def step(self) -> None:
        served = self.engine.step()
        if not served:
            return
        now = time.time()
        self.send(P.StepOutputs([self._delta(req, now) for req in served]))
        for req in served:
            if req.is_finished:
                self.stats.record(req)

    def _delta(self, req: Request, now: float) -> P.TokenDelta:
        admitted = self._admitted.pop(req.request_id, None)
        return P.TokenDelta(
            req.request_id, req.output_token_ids[-1:], len(req.prompt_token_ids), req.num_cached_tokens or 0,
            len(req.output_token_ids), req.finish_reason, admitted_at=admitted,
            first_token_at=None if admitted is None else now)

    def flush_events(self) -> None:
        if self._events:
            self.seq += 1
            self.send(P.Events(KVEventBatch(self.cfg.worker_id, self.seq, self._events[:])))
            self._events.clear()

    def load_report(self, now: float) -> LoadReport:
        return build_load_report(self.cfg.worker_id, now, self.engine.scheduler, self.stats, self.engine.meter.totals)


def run_engine_process(cfg: EngineProcConfig) -> None:
    """Entry point of the engine process (spawned by the frontend)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    with contextlib.suppress(FrontendGone):  # exit with the frontend, never orphaned
        EngineLoop(cfg).run()
