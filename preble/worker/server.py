"""Start one worker: the engine in a child process, the HTTP frontend in this one."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import uvicorn

from ..http.logs import configure_logging
from ..http.serve import server_config
from ..models.config import ModelConfig
from .app import create_worker_app
from .config import FrontendConfig, WorkerConfig
from .engine_client import EngineClient
from .engine_process import EngineProcConfig, run_engine_process

log = logging.getLogger(__name__)


def run_worker(cfg: WorkerConfig) -> None:
    configure_logging(cfg.log_json)
    worker_id = cfg.worker_id or f"{cfg.host}:{cfg.port}"
    model_cfg = ModelConfig.from_dir(cfg.engine.model)
    max_len = model_cfg.context_window(cfg.engine.scheduler.max_model_len)
    ipc_dir = Path(tempfile.mkdtemp(prefix="preble-worker-"))
    proc_cfg = EngineProcConfig(
        engine=replace(cfg.engine, scheduler=replace(cfg.engine.scheduler, max_model_len=max_len)),
        worker_id=worker_id, in_addr=f"ipc://{ipc_dir}/in", out_addr=f"ipc://{ipc_dir}/out",
        num_threads=cfg.num_threads)
    engine = mp.get_context("spawn").Process(target=run_engine_process, args=(proc_cfg,),
                                             name=f"preble-engine-{worker_id}", daemon=True)
    engine.start()
    client = EngineClient(proc_cfg.in_addr, proc_cfg.out_addr, FrontendConfig.subscriber_queue)
    frontend = FrontendConfig(worker_id=worker_id, model_path=cfg.engine.model,
                              served_model_name=cfg.served_model_name or Path(cfg.engine.model).name,
                              max_model_len=max_len, vocab_size=model_cfg.vocab_size,
                              default_max_tokens=cfg.default_max_tokens,
                              max_inflight=cfg.max_inflight, api_key=cfg.api_key)
    app = create_worker_app(frontend, client)
    server = uvicorn.Server(server_config(app, cfg.host, cfg.port, cfg.drain_timeout_s, cfg.keep_alive_s))
    engine_lost = threading.Event()

    def watch_engine() -> None:
        """An engine that dies takes the worker down with it, so a supervisor restarts both."""
        engine.join()
        if not server.should_exit:
            log.error("engine process exited (code %s); stopping the worker", engine.exitcode)
            engine_lost.set()
            server.should_exit = True

    threading.Thread(target=watch_engine, name="engine-watch", daemon=True).start()
    try:
        server.run()
    finally:
        engine.terminate()
        engine.join(timeout=5)
        if engine.is_alive():
            os.kill(engine.pid, signal.SIGKILL)
        for name in ("in", "out"):
            (ipc_dir / name).unlink(missing_ok=True)
        ipc_dir.rmdir()
    if engine_lost.is_set():
        raise SystemExit(1)
