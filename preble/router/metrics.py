"""The router's Prometheus metrics: one definition, read at scrape time from the pool and the
policy (histogram buckets shared with the worker's, so the two compare)."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..core.routing.base import RoutingPolicy
from ..http.buckets import LATENCY_BUCKETS, TPOT_BUCKETS
from ..http.limits import Admission
from . import dashboard as dash
from .workers import WorkerPool


class RequestStatus(StrEnum):
    """How a request ended at the router (the `status` label of `preble_router_requests`)."""

    OK = "ok"
    REJECTED = "rejected"  # a worker refused it (its 4xx passed on)
    WORKER_FAILED = "worker_failed"  # every attempt failed, or the stream was cut after it began
    CLIENT_GONE = "client_gone"  # the client left before the stream ended


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("preble_router_requests", "Requests by outcome", ["status"], registry=r)
        self.branches = Counter("preble_router_route_branch", "Routing decisions by policy branch",
                                ["policy", "branch"], registry=r)
        self.retries = Counter("preble_router_retries", "Requests re-sent to another worker", registry=r)
        self.failures = Counter("preble_router_failures", "Failures of the router's own code (logged with "
                                "their traceback): policy callbacks, worker loops restarted", ["component"],
                                registry=r)
        self.cut = Counter("preble_router_streams_cut", "Streams ended by an error event after a worker "
                           "failed mid-answer", registry=r)
        self.ttft = Histogram("preble_router_ttft_seconds", "Time to first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.e2e = Histogram("preble_router_e2e_seconds", "Request latency", buckets=LATENCY_BUCKETS,
                             registry=r)
        self.tpot = Histogram("preble_router_tpot_seconds", "Time per output token after the first",
                              buckets=TPOT_BUCKETS, registry=r)
        self.cached = Counter("preble_router_cached_tokens", "Prompt tokens served from worker caches",
                              ["worker"], registry=r)
        self.prompt = Counter("preble_router_prompt_tokens", "Prompt tokens routed", ["worker"], registry=r)
        self.inflight = Gauge("preble_router_inflight_requests", "Requests admitted and not finished",
                              registry=r)
        self.inflight_tokens = Gauge("preble_router_inflight_prompt_tokens", "Prompt tokens of admitted requests",
                                     registry=r)
        self.worker = {name: Gauge(f"preble_router_worker_{name}", doc, ["worker"], registry=r) for name, doc in [
            ("healthy", "1 if the worker passes its health checks"),
            ("running", "Requests in the worker's running batch (its last load report)"),
            ("waiting", "Requests waiting in the worker's queue"),
            ("kv_usage", "Share of the worker's KV pages in use"),
            ("hit_ratio", "The worker's windowed prefix-cache hit ratio"),
            ("load_seconds", "The policy's load figure for the worker (seconds of queued work; latency, e2, preble_paper)")]}

    def refresh(self, pool: WorkerPool, policy: RoutingPolicy, admission: Admission) -> None:
        """Gauges read at scrape time from the pool's latest load reports and the policy."""
        self.inflight.set(admission.requests)
        self.inflight_tokens.set(admission.tokens)
        for rep in dash.replicas(pool, policy):
            values = {"healthy": float(rep["healthy"]), "running": rep["running"], "waiting": rep["waiting"],
                      "kv_usage": rep["kv_usage"], "hit_ratio": rep["hit_ratio"], "load_seconds": rep["load_s"]}
            for name, value in values.items():
                if value is not None:
                    self.worker[name].labels(rep["worker_id"]).set(value)
