"""Workers placed by Ray (`preble serve --ray`): one actor per GPU, or per share of CPUs, anywhere
in a Ray cluster.

Each actor starts a `preble worker` on its node, bound to the node's address on a free port, and
restarts it if it crashes; the worker dies with its actor. Ray only places and supervises:
requests go from the router to the workers over HTTP, exactly as with local workers, so under any
other orchestrator the same workers are simply listed to `preble router --worker URL`.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

from .launch_config import ServeConfig
from .processes import ChildProcess, supervise
from .supervision import wait_healthy, worker_api_key, worker_command

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RayConfig:
    object_store_bytes: int = 128 * 2**20  # a cluster started here; workers pass no Ray objects
    stop_timeout_s: float = 20.0  # how long actors get to stop their workers before they are killed


class WorkerActor:
    """Runs one worker on the node Ray placed it on (wrapped with `ray.remote` at use, so that
    importing this module does not need Ray)."""

    def __init__(self, cfg: ServeConfig, index: int, threads: int | None, api_key: str) -> None:
        import ray

        host = ray.util.get_node_ip_address()
        port = _free_port(host)
        self._url = f"http://{host}:{port}"
        # Ray has set CUDA_VISIBLE_DEVICES to the actor's GPU; the worker inherits it.
        env = {**os.environ, "PREBLE_WORKER_API_KEY": api_key}
        self.worker = ChildProcess(f"worker-{index}", worker_command(cfg, index, host, port, threads), env)
        self._interval_s, self._grace_s = cfg.supervise_interval_s, cfg.stop_grace_s
        self._stop = threading.Event()

    def url(self) -> str:
        return self._url

    def exit_code(self) -> int | None:
        """The worker's exit code if it has exited (before supervision starts, a failed start)."""
        return self.worker.proc.poll()

    def worker_pid(self) -> int:
        return self.worker.proc.pid

    def supervise(self) -> None:
        threading.Thread(target=supervise, args=([self.worker], self._stop, self._interval_s),
                         name="preble-supervisor", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.worker.stop(self._grace_s)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RayWorkers:
    """The launcher's workers as Ray actors: in the cluster at `cfg.ray_address`, or in one started
    here on loopback. Each reserves its tensor-parallel degree of GPUs (`--device cuda`) on one
    node, or an equal share of the cluster's CPUs, split between its ranks as torch threads."""

    def __init__(self, cfg: ServeConfig, ray_cfg: RayConfig = RayConfig()) -> None:
        if cfg.ray_address is None:
            # Read when Ray is imported; without it Ray advertises the host's outward address even
            # for a single-host cluster, and the workers would listen there.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        self.cfg, self.ray_cfg = cfg, ray_cfg
        if cfg.ray_address is None:
            ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, log_to_driver=not cfg.log_json,
                     object_store_memory=ray_cfg.object_store_bytes)
        else:
            ray.init(address=cfg.ray_address, log_to_driver=not cfg.log_json)
        self.address = ray.get_runtime_context().gcs_address
        self.api_key = worker_api_key()
        if cfg.device == "cuda":
            resources, threads = {"num_gpus": cfg.tp}, None
        else:
            share = max(cfg.tp, int(ray.cluster_resources().get("CPU", 1)) // cfg.workers)
            resources, threads = {"num_cpus": share}, max(1, share // cfg.tp)
        actor = ray.remote(WorkerActor).options(**resources)
        self.actors = [actor.remote(cfg, i, threads, self.api_key) for i in range(cfg.workers)]
        self.urls: list[str] = []

    def ready(self, timeout_s: float) -> None:
        """Wait until Ray has placed every actor and every worker answers; then supervise them."""
        import ray

        try:
            self.urls = ray.get([a.url.remote() for a in self.actors], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            need = f"{self.cfg.tp} GPU(s)" if self.cfg.device == "cuda" else "a share of CPUs"
            raise TimeoutError(f"Ray placed fewer than {self.cfg.workers} workers, each needing {need}, "
                               f"in {timeout_s:.0f} s; cluster: {ray.cluster_resources()}") from None
        wait_healthy(self.urls, timeout_s, self._check_started)
        ray.get([a.supervise.remote() for a in self.actors])

    def _check_started(self) -> None:
        import ray

        for i, code in enumerate(ray.get([a.exit_code.remote() for a in self.actors])):
            if code is not None:
                raise RuntimeError(f"worker-{i} exited during start-up (code {code})")

    def stop(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        try:
            ray.get([a.stop.remote() for a in self.actors], timeout=self.ray_cfg.stop_timeout_s)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            pass
        for a in self.actors:
            ray.kill(a)
        ray.shutdown()
