"""The router's configuration: every default of the router, its worker pool and its dashboard.

Apart from the code it configures (fastapi, transformers, httpx), so that the command line reads
its defaults from here and still starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.routing import DEFAULT_PAGE_SIZE, DEFAULT_POLICY
from ..http.serve import DRAIN_TIMEOUT_S, KEEP_ALIVE_S


@dataclass(frozen=True)
class WorkerPoolConfig:
    load_interval_s: float = 0.25  # load poll period; also the health check
    unhealthy_after_s: float = 1.5  # no answer for this long: routed around
    connect_timeout_s: float = 1.0
    reconnect_backoff_s: float = 0.5
    stall_grace_s: float = 1.0  # a read from a worker marked down is cut once it has waited this long
    # After an answer's [DONE], its body's end is read for at most this long before the connection is
    # closed: read to the end, the connection goes back to the pool (unread, it is dropped, and the
    # next request to the worker waits for a new one).
    body_end_timeout_s: float = 1.0
    # An idle connection to a worker is reused this long, below uvicorn's default keep-alive (5 s),
    # which vLLM and SGLang servers keep: a server that closes first may close it as a request goes out.
    upstream_idle_s: float = 4.0
    worker_kind: str = "preble"  # preble | openai: any OpenAI-compatible engine (vLLM, SGLang, ...)
    kv_events: tuple[str, ...] = ()  # vLLM engines' KV event publishers (ZMQ), one per worker URL, in order
    page_size: int = DEFAULT_PAGE_SIZE  # the router's KV page size: vLLM blocks are split into such pages


@dataclass(frozen=True)
class DashboardConfig:
    bucket_s: float = 5.0  # resolution of the rates over time
    span_s: float = 300.0  # how far back they go
    samples_per_bucket: int = 2000  # TTFTs kept per bucket for its percentiles (a uniform sample)
    preview_tokens: int = 12  # tokens shown from each end of a prefix
    full_text: bool = False  # show whole prefixes (the operator's choice: prompts may be private)
    max_prefixes: int = 50
    max_decisions: int = 200
    prefix_scan_budget: int = 4096  # tree nodes a prefix query looks at


@dataclass(frozen=True)
class RouterConfig:
    model_path: str  # tokenizer and chat template source
    served_model_name: str
    max_model_len: int
    default_max_tokens: int = 256  # for chat requests that give no limit
    max_attempts: int = 3  # workers tried for a request whose answer has not started
    retry_backoff_s: float = 0.05  # pause before the second attempt, doubling for each later one
    max_inflight: int = 1024  # requests admitted at once; beyond, 429
    max_inflight_tokens: int = 8_000_000  # prompt tokens of admitted requests; beyond, 429
    retry_after_s: int = 1  # the Retry-After of a 429
    max_body_bytes: int = 16 << 20
    api_key: str | None = None  # clients must present it (all but /health)
    worker_api_key: str | None = None  # presented to the workers
    recent_decisions: int = 1000  # routing decisions kept for /routes
    pool: WorkerPoolConfig = WorkerPoolConfig()
    dashboard: DashboardConfig = DashboardConfig()


@dataclass(frozen=True)
class RouterServerConfig:
    """`preble router`'s options: what build_router_app turns into a RouterConfig and a policy."""

    model: str  # HF folder: tokenizer, chat template, context window
    workers: list[str] = field(default_factory=list)  # worker base URLs
    policy: str = DEFAULT_POLICY
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    max_model_len: int | None = None
    page_size: int | None = None  # the workers' KV page size; None: read from their load reports
    discovery_timeout_s: float = 10.0  # how long to wait for a worker to tell its page size
    seed: int = 0
    max_inflight: int = RouterConfig.max_inflight
    api_key: str | None = None  # required from clients
    worker_api_key: str | None = None  # presented to workers
    drain_timeout_s: float = DRAIN_TIMEOUT_S  # on SIGTERM: in-flight requests get this long to finish
    keep_alive_s: float = KEEP_ALIVE_S  # an idle client connection stays open this long
    dashboard_full_text: bool = DashboardConfig.full_text
    log_json: bool = False  # log lines as JSON objects
    worker_kind: str = "preble"  # preble | openai (vllm, sglang: OpenAI-compatible engines)
    kv_events: list[str] = field(default_factory=list)  # vLLM workers' KV event endpoints (ZMQ), one per worker
    cost_model: str | None = None  # e2's cost model, a `preble profile` JSON; None: built-in (8B on H100)
    health_timeout_s: float = WorkerPoolConfig.unhealthy_after_s  # a worker silent this long is routed around
