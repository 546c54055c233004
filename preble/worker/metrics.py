"""The worker's metrics: request outcomes and latencies (the router's histogram buckets), token
counts, and the engine's last load report as gauges."""

from __future__ import annotations

import logging
import time
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..http.buckets import LATENCY_BUCKETS, TPOT_BUCKETS
from .engine_client import EngineClient
from .protocol import TokenDelta

log = logging.getLogger("preble.worker")


class RequestStatus(StrEnum):
    """How an engine request ended (the `status` label of `preble_worker_requests`)."""

    OK = "ok"
    ERROR = "error"  # failed or cut off after it started
    REJECTED = "rejected"  # the engine refused it before any output


class WorkerMetrics:
    """The worker's Prometheus metrics, and one log line per finished engine request."""

    def __init__(self, worker_id: str) -> None:
        self.registry = CollectorRegistry()
        r, labels = self.registry, ["worker"]
        self.requests = Counter("preble_worker_requests", "Requests by outcome", labels + ["status"], registry=r)
        self.ttft = Histogram("preble_worker_ttft_seconds", "Time to first token", labels,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("preble_worker_e2e_seconds", "Request latency", labels,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("preble_worker_tpot_seconds", "Time per output token after the first", labels,
                              buckets=TPOT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("preble_worker_prompt_tokens", "Prompt tokens", labels, registry=r)
        self.cached_tokens = Counter("preble_worker_cached_tokens", "Prompt tokens served from cache",
                                     labels, registry=r)
        self.output_tokens = Counter("preble_worker_output_tokens", "Generated tokens", labels, registry=r)
        self.gauges = {name: Gauge(f"preble_worker_{name}", doc, labels, registry=r) for name, doc in [
            ("running", "Requests in the running batch"), ("waiting", "Requests waiting for admission"),
            ("kv_usage", "Share of KV pages in use"), ("hit_ratio", "Windowed prefix-cache hit ratio"),
            ("windowed_tpot_seconds", "Windowed time per output token")]}
        self.worker = worker_id

    def finished(self, request_id: str, status: RequestStatus, start: float, first: float | None,
                 last: TokenDelta | None) -> None:
        """Count one finished engine request and log it (its id is the router's, when routed)."""
        w, end = self.worker, time.monotonic()
        self.requests.labels(w, status).inc()
        if first is not None:
            self.ttft.labels(w).observe(first - start)
        fields = {"request_id": request_id, "worker": w, "status": status}
        if last is not None:
            self.e2e.labels(w).observe(end - start)
            self.prompt_tokens.labels(w).inc(last.prompt_tokens)
            self.cached_tokens.labels(w).inc(last.cached_tokens)
            self.output_tokens.labels(w).inc(last.output_tokens)
            if first is not None and last.output_tokens > 1:
                self.tpot.labels(w).observe((end - first) / (last.output_tokens - 1))
            fields.update(prompt_tokens=last.prompt_tokens, cached_tokens=last.cached_tokens,
                          output_tokens=last.output_tokens, latency=round(end - start, 6))
        if first is not None:
            fields["ttft"] = round(first - start, 6)
        log.info("request", extra={"fields": fields})

    def render(self, client: EngineClient) -> bytes:
        load = client.load
        if load is not None:
            g, w = self.gauges, self.worker
            g["running"].labels(w).set(load.running)
            g["waiting"].labels(w).set(load.waiting)
            g["kv_usage"].labels(w).set((load.kv_used_pages - load.kv_evictable_pages) / load.kv_total_pages)
            g["hit_ratio"].labels(w).set(load.hit_ratio)
            g["windowed_tpot_seconds"].labels(w).set(load.tpot)
        return generate_latest(self.registry)
