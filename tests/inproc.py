"""A worker and a router in this process, for tests that need one live server but not a cluster.

`InProcessWorker` runs the real engine loop (`EngineLoop`, the engine process's body) on a thread
and the real worker app under uvicorn on another; `serve_app` serves any ASGI app (a router from
`create_router_app`) on a thread. Both listen on loopback, so a router reaches a worker over HTTP
as in production, and start in about a second on a tiny model.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import msgspec
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse

from preble.bench.local_cluster import free_port_block
from preble.core.messages import KVEventBatch, LoadReport
from preble.core.scheduler_config import SchedulerConfig
from preble.engine.config import EngineConfig
from preble.http.serve import server_config
from preble.models.config import ModelConfig
from preble.worker.app import create_worker_app
from preble.worker.config import FrontendConfig
from preble.worker.engine_client import EngineClient
from preble.worker.engine_process import EngineLoop, EngineProcConfig

from .polling import wait_for


def free_port() -> int:
    """A free port below the kernel's ephemeral range (which client sockets may take meanwhile)."""
    return free_port_block(1)


@contextlib.contextmanager
def serve_app(app, port: int | None = None) -> Iterator[str]:
    """Serve `app` (lifespan included) on loopback from a thread, with the router's and workers'
    uvicorn settings; its base URL while inside."""
    port = port or free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, drain_timeout_s=1))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30.0, step_s=0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def fake_worker_app(worker_id: str, page_size: int, hung: threading.Event | None = None) -> FastAPI:
    """A Preble worker's health check, load reports (idle) and KV events (an empty resync), with
    no engine; its /load stops answering while `hung` is set. Tests add the routes they need."""
    app = FastAPI()
    report = LoadReport(worker_id, 0.0, running=0, waiting=0, waiting_tokens=0, kv_used_pages=0,
                        kv_evictable_pages=0, kv_total_pages=100, page_size=page_size, hit_ratio=0.0, tpot=0.0,
                        num_preemptions=0)

    @app.get("/health")
    async def health():
        return {"status": "ok", "worker_id": worker_id}

    @app.get("/load")
    async def load():
        while hung is not None and hung.is_set():
            await asyncio.sleep(0.01)
        return Response(msgspec.json.encode(report), media_type="application/json")

    @app.get("/kv_events")
    async def kv_events():
        async def lines():
            yield msgspec.json.encode(KVEventBatch(worker_id, 0, [], resync=True)) + b"\n"
            while True:
                await asyncio.sleep(1)
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app


class InProcessWorker:
    """One Preble worker: the engine loop on a thread, the HTTP frontend on another;
    `frontend_options` are FrontendConfig fields."""

    def __init__(self, model: str, worker_id: str = "w0", page_size: int = 4, max_inflight: int = 512,
                 max_running_requests: int = SchedulerConfig.max_running_requests, num_pages: int = 512,
                 **frontend_options) -> None:
        self.model = model
        model_cfg = ModelConfig.from_dir(model)
        window = model_cfg.context_window(None)
        ipc = Path(tempfile.mkdtemp(prefix="preble-test-worker-"))
        engine = EngineConfig(model=model, device="cpu", page_size=page_size, num_pages=num_pages,
                              scheduler=replace(SchedulerConfig(), max_model_len=window,
                                                max_running_requests=max_running_requests))
        self.proc_cfg = EngineProcConfig(engine=engine, worker_id=worker_id, in_addr=f"ipc://{ipc}/in",
                                         out_addr=f"ipc://{ipc}/out")
        self.frontend = FrontendConfig(worker_id=worker_id, model_path=model, served_model_name=Path(model).name,
                                       max_model_len=window, vocab_size=model_cfg.vocab_size,
                                       max_inflight=max_inflight, **frontend_options)
        self.loop: EngineLoop | None = None
        self._ready = threading.Event()
        self._engine_thread = threading.Thread(target=self._run_engine, name=f"engine-{worker_id}", daemon=True)
        self._engine_thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the engine did not start")
        self.client = EngineClient(self.proc_cfg.in_addr, self.proc_cfg.out_addr, FrontendConfig.subscriber_queue)
        self.app = create_worker_app(self.frontend, self.client)
        self._serving = serve_app(self.app)
        self.url = self._serving.__enter__()
        try:
            wait_for(lambda: httpx.get(f"{self.url}/load", timeout=2).status_code == 200, 30.0, step_s=0.05)
        except BaseException:
            self.stop()
            raise

    def _run_engine(self) -> None:
        self.loop = EngineLoop(self.proc_cfg)
        self._ready.set()
        self.loop.run()  # returns on the Shutdown the app sends when it stops

    def cached_prefixes(self) -> set[tuple[int, ...]]:
        """The engine's cache: the token ids of every page-aligned prefix it holds (a snapshot)."""
        return snapshot(self.loop.engine.cache)

    def stop(self) -> None:
        self._serving.__exit__(None, None, None)
        self._engine_thread.join(timeout=10)

    def __enter__(self) -> InProcessWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def snapshot(cache) -> set[tuple[int, ...]]:
    """Every page-aligned prefix a radix cache holds, as token tuples (root excluded)."""
    out: set[tuple[int, ...]] = set()
    ps = cache.page_size

    def walk(node, prefix: tuple[int, ...]) -> None:
        for child in list(node.children.values()):
            tokens = prefix + tuple(child.tokens)
            for end in range(len(prefix) + ps, len(tokens) + 1, ps):
                out.add(tokens[:end])
            walk(child, tokens)

    walk(cache.root, ())
    return out


async def wait_async(predicate, timeout_s: float = 10.0, step_s: float = 0.01) -> None:
    """Await until `predicate()` holds; TimeoutError after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(step_s)

