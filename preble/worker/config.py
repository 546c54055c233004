"""A worker's configuration: every default of the worker and its HTTP frontend.

Apart from the code it configures (fastapi, transformers, uvicorn), so that the command line
reads its defaults from here and still starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.config import EngineConfig
from ..http.serve import DRAIN_TIMEOUT_S, KEEP_ALIVE_S


@dataclass(frozen=True)
class FrontendConfig:
    worker_id: str
    model_path: str
    served_model_name: str
    max_model_len: int
    vocab_size: int  # the model's: prompt token ids at or above it are refused with a 400
    default_max_tokens: int = 256  # for chat and /generate requests that give no limit
    health_timeout_s: float = 2.0  # an idle engine counts as dead after this long without a word
    # ... and one with requests in flight after this long: it cannot speak during a step, and a long
    # step (a slow device, a big prefill chunk) must not get its streams cut as a dead engine's
    busy_engine_timeout_s: float = 60.0
    subscriber_queue: int = 10_000  # KV event batches buffered per subscriber before cutting it off
    max_inflight: int = 512  # requests (choices) admitted at once; beyond, 429
    max_inflight_tokens: int = 2_000_000  # their prompt tokens; beyond, 429
    retry_after_s: int = 1  # the Retry-After of a 429
    max_body_bytes: int = 16 << 20
    api_key: str | None = None  # every endpoint but /health needs it (a router presents it)


@dataclass(frozen=True)
class WorkerConfig:
    """`preble worker`'s options: the engine's, and what run_worker turns into a FrontendConfig."""

    engine: EngineConfig
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8100
    worker_id: str | None = None  # default: host:port
    served_model_name: str | None = None  # default: the model folder's name
    num_threads: int | None = None  # torch CPU threads of the engine
    default_max_tokens: int = FrontendConfig.default_max_tokens
    max_inflight: int = FrontendConfig.max_inflight
    api_key: str | None = None  # required on every endpoint but /health
    drain_timeout_s: float = DRAIN_TIMEOUT_S  # on SIGTERM: in-flight requests get this long to finish
    keep_alive_s: float = KEEP_ALIVE_S  # an idle client connection stays open this long
    log_json: bool = False  # log lines as JSON objects
