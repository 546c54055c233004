"""Preble's router against other routers, in front of the same Preble workers.

`sglang-router` and `vllm-router` front SGLang-style workers: they probe `/health`, read
`/server_info` and `/model_info` (sglang-router), and forward `/v1/completions` with a few
SGLang-style fields added, streaming the answer back as it comes. A Preble worker answers all of
that, so each router runs in front of the same N local workers, one after the other: the workers
start once, their prefix caches are flushed (`POST /flush_cache`) before every run so each router
starts cold, and every router gets the same requests at the same Poisson arrival times.

The workloads are made to fit a small model on a CPU: each prompt keeps at most `prefix_cap`
tokens of its shared prefix (the part other requests share; the rest of the prompt is kept) and
asks for at most `max_output_tokens`. Prompts go out as text, decoded from token ids where
needed, because sglang-router takes no token-id prompts on `/v1/completions`.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from ..core.pages import DEFAULT_PAGE_SIZE
from ..processes import ChildProcess, stop_all, wait_until
from ..sim.report import summarize
from .loadgen import LoadConfig, LoadRequest, RequestRecord, run_load
from .local_cluster import free_port_block
from .provenance import source_revision
from .requests import load_request
from .workloads import WorkloadRequest, make_workload


@dataclass(frozen=True)
class RouterKind:
    """How to find and start one kind of peer router."""

    executable: str  # console script on PATH
    env: str  # environment variable naming the executable instead
    distribution: str  # Python distribution, for its version
    subcommand: tuple[str, ...] = ()
    log_level: str = "warn"


PEER_KINDS: dict[str, RouterKind] = {
    "sglang": RouterKind("sglang-router", "PREBLE_SGLANG_ROUTER", "sglang-router", ("launch",), "warn"),
    "vllm": RouterKind("vllm-router", "PREBLE_VLLM_ROUTER", "vllm-router", (), "warning"),
}


@dataclass(frozen=True)
class RouterSpec:
    """`kind:policy`, e.g. `preble:e2`, `sglang:cache_aware`, `vllm:round_robin`."""

    kind: str
    policy: str

    @classmethod
    def parse(cls, text: str) -> RouterSpec:
        kind, sep, policy = text.strip().partition(":")
        if not sep or not policy or kind not in ("preble", *PEER_KINDS):
            raise ValueError(f"router {text!r}: expected KIND:POLICY, KIND one of preble, {', '.join(PEER_KINDS)}")
        return cls(kind, policy)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.policy}"


@dataclass(frozen=True)
class WorkloadRun:
    """One workload of the comparison: its parameters, how many requests, at which rate."""

    name: str
    rate: float  # Poisson arrivals per second
    num_requests: int
    params: Mapping[str, Any] = field(default_factory=dict)


# Three demo-model workers (one torch thread each) on a 2-core machine: about 70 s of arrivals
# per run, at a rate a little under where e2's latency turns up (its knee on that machine).
CPU_WORKLOADS: tuple[WorkloadRun, ...] = (
    WorkloadRun("toolbench", 0.45, 32, {"max_tokens": 16}),
    WorkloadRun("agent", 0.6, 42, {"max_tokens_cap": 16}),
    WorkloadRun("programming", 0.5, 35, {"min_tokens": 8, "median_tokens": 16, "max_tokens": 32}),
    WorkloadRun("videoqa", 0.45, 32, {"max_tokens": 8}),
    WorkloadRun("loogle", 0.5, 35, {"max_tokens_cap": 16}),
)
DEFAULT_ROUTERS = ("preble:e2", "preble:round_robin", "sglang:cache_aware", "vllm:cache_aware")


def select_workloads(names: Sequence[str], overrides: Sequence[tuple[str | None, str, Any]] = (),
                     rate: float | None = None, num_requests: int | None = None, rate_scale: float = 1.0,
                     preset: Sequence[WorkloadRun] = CPU_WORKLOADS) -> tuple[WorkloadRun, ...]:
    """Workloads of `preset` by name; `overrides` are (workload or None for all, key, value)
    parameters; `rate` and `num_requests` replace every preset's; `rate_scale` multiplies the
    rates (and the request counts, so that runs last as long)."""
    known = {w.name: w for w in preset}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out = []
    for w in (known[n] for n in names):
        params = {**w.params, **{k: v for target, k, v in overrides if target in (None, w.name)}}
        out.append(replace(w, params=params, rate=(rate or w.rate) * rate_scale,
                           num_requests=num_requests or round(w.num_requests * rate_scale)))
    return tuple(out)


@dataclass(frozen=True)
class PeerBenchConfig:
    """One comparison: the workers (shared by every run), the routers, the workloads."""

    model: str | None = None  # HF folder; None: the demo model
    workers: int = 3
    routers: tuple[str, ...] = DEFAULT_ROUTERS
    workloads: tuple[WorkloadRun, ...] = CPU_WORKLOADS
    prefix_cap: int | None = 1024  # shared-prefix tokens kept per prompt; None: all
    max_output_tokens: int | None = 32
    worker_threads: int | None = None  # torch threads per worker; None: the cores shared out
    page_size: int = DEFAULT_PAGE_SIZE
    num_pages: int = 384  # KV pages per worker: 6,144 tokens, about half a workload's distinct prefixes
    max_num_batched_tokens: int = 512
    seed: int = 0
    sglang_router: str | None = None  # executables; None: $PREBLE_SGLANG_ROUTER, else PATH
    vllm_router: str | None = None
    worker_startup_s: float = 300.0
    router_startup_s: float = 120.0
    flush_attempts: int = 20  # a worker refuses to flush while requests still run
    poll_s: float = 0.5
    stop_grace_s: float = 15.0
    request_timeout_s: float = 600.0
    log_tail_chars: int = 3000
    log_dir: str | None = None  # keep the workers' and routers' logs here; None: a temporary folder
    cost_model: str | None = None  # e2's cost model for these workers (`preble profile` JSON); None: built-in
    health_timeout_s: float | None = None  # Preble router's health timeout; None: its default

    def threads(self) -> int:
        return self.worker_threads or max(1, (os.cpu_count() or 1) // self.workers)

    def worker_args(self) -> list[str]:
        return ["--page-size", str(self.page_size), "--num-pages", str(self.num_pages),
                "--max-num-batched-tokens", str(self.max_num_batched_tokens), "--threads", str(self.threads())]

    def executable(self, kind: str) -> str | None:
        """The peer router's executable, or None when it cannot be found."""
        k = PEER_KINDS[kind]
        given = {"sglang": self.sglang_router, "vllm": self.vllm_router}[kind] or os.environ.get(k.env)
        path = given or shutil.which(k.executable)
        return path if path and os.access(path, os.X_OK) else None


class WorkerPool:
    """N `preble worker` processes on loopback ports, with no API key (the peer routers present
    none), started once for every run."""

    def __init__(self, model: str, cfg: PeerBenchConfig, log_dir: Path) -> None:
        self.cfg = cfg
        base = free_port_block(cfg.workers)
        self.urls = [f"http://127.0.0.1:{base + i}" for i in range(cfg.workers)]
        env = {k: v for k, v in os.environ.items() if k != "PREBLE_WORKER_API_KEY"}
        self.procs = [ChildProcess(f"worker-{i}", [sys.executable, "-m", "preble.cli", "worker", "--model", model,
                                                   "--host", "127.0.0.1", "--port", str(base + i),
                                                   "--worker-id", f"worker-{i}", *cfg.worker_args()],
                                   env, log_dir / f"worker-{i}.log") for i in range(cfg.workers)]
        try:
            wait_until(lambda: all(httpx.get(f"{u}/health", timeout=1).status_code == 200 for u in self.urls),
                       self.procs, cfg.worker_startup_s, cfg.poll_s, "workers", cfg.log_tail_chars)
            self.model_name = httpx.get(f"{self.urls[0]}/v1/models", timeout=5).json()["data"][0]["id"]
        except BaseException:
            self.stop()
            raise

    def flush(self) -> None:
        """Empty every worker's prefix cache (and windowed statistics), waiting out stragglers."""
        for url in self.urls:
            for _ in range(self.cfg.flush_attempts):
                resp = httpx.post(f"{url}/flush_cache", timeout=10)
                if resp.status_code == 200:
                    break
                time.sleep(self.cfg.poll_s)
            else:
                raise RuntimeError(f"{url} did not flush its cache: {resp.text[:200]}")

    def requests_served(self) -> dict[str, int]:
        """Requests each worker finished so far, from its Prometheus counter."""
        pattern = re.compile(r'^preble_worker_requests_total\{[^}]*status="ok"[^}]*\}\s+(\S+)', re.M)
        out = {}
        for i, url in enumerate(self.urls):
            text = httpx.get(f"{url}/metrics", timeout=10).text
            out[f"worker-{i}"] = int(sum(float(v) for v in pattern.findall(text)))
        return out

    def stop(self) -> None:
        stop_all(self.procs, self.cfg.stop_grace_s)


def router_command(spec: RouterSpec, executable: str | None, model: str, workers: Sequence[str], port: int,
                   metrics_port: int, cost_model: str | None = None,
                   health_timeout_s: float | None = None) -> list[str]:
    """The command line that starts `spec` on loopback `port` in front of `workers`."""
    if spec.kind == "preble":
        return [sys.executable, "-m", "preble.cli", "router", "--model", model,
                *(a for url in workers for a in ("--worker", url)), "--policy", spec.policy,
                "--host", "127.0.0.1", "--port", str(port),
                *(["--cost-model", cost_model] if cost_model else []),
                *(["--health-timeout", str(health_timeout_s)] if health_timeout_s else [])]
    kind = PEER_KINDS[spec.kind]
    if executable is None:
        raise ValueError(f"no executable for {spec.name}")
    return [executable, *kind.subcommand, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers,
            "--policy", spec.policy, "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--log-level", kind.log_level]


def router_ready(spec: RouterSpec, url: str, workers: int) -> bool:
    """Whether the router sees every worker healthy: Preble's `/health` lists them, the peers'
    `/readiness` counts them."""
    if spec.kind == "preble":
        return len(httpx.get(f"{url}/health", timeout=2).json().get("healthy_workers", [])) == workers
    resp = httpx.get(f"{url}/readiness", timeout=2)
    return resp.status_code == 200 and resp.json().get("healthy_workers") == workers


def router_version(spec: RouterSpec, executable: str | None) -> str:
    """The peer router's package version (from the interpreter its script names), or Preble's."""
    if spec.kind == "preble":
        from importlib.metadata import version

        return f"preble {version('preble')}"
    kind = PEER_KINDS[spec.kind]
    try:
        with open(executable or "", "rb") as f:
            first = f.readline().decode(errors="replace")
        python = first[2:].strip() if first.startswith("#!") else sys.executable
        out = subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version({kind.distribution!r}))"],
                             capture_output=True, text=True, timeout=30)
        return f"{kind.distribution} {out.stdout.strip()}" if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prepare_requests(run: WorkloadRun, tokenizer, cfg: PeerBenchConfig) -> list[LoadRequest]:
    """The workload's requests as text prompts, shared prefixes cut to `prefix_cap` tokens and
    outputs to `max_output_tokens` (the same list for every router)."""
    wl = make_workload(run.name, num_requests=run.num_requests, seed=cfg.seed, tokenizer=tokenizer, **run.params)
    return [load_request(r, prompt=capped_text(r, tokenizer, cfg.prefix_cap), max_tokens_cap=cfg.max_output_tokens)
            for r in wl.requests]


def capped_text(r: WorkloadRequest, tokenizer, cap: int | None) -> str:
    """`r`'s prompt as text with at most `cap` tokens of its shared prefix (None: all of it);
    token ids are decoded."""
    text = r.prompt
    if text is None or (cap is not None and r.shared_prefix_len > cap):
        ids = list(r.prompt_token_ids) if r.prompt_token_ids is not None else \
            tokenizer.encode(text, add_special_tokens=False)
        if cap is not None and r.shared_prefix_len > cap:
            ids = ids[:cap] + ids[r.shared_prefix_len:]
        text = tokenizer.decode(ids)
    return text


def _run_one(spec: RouterSpec, executable: str | None, pool: WorkerPool, model: str, reqs: list[LoadRequest],
             run: WorkloadRun, cfg: PeerBenchConfig, log_dir: Path,
             on_done: Callable[[RequestRecord], None] | None) -> dict[str, Any]:
    pool.flush()
    before = pool.requests_served()
    port = free_port_block(2)
    url = f"http://127.0.0.1:{port}"
    proc = ChildProcess(spec.name, router_command(spec, executable, model, pool.urls, port, port + 1,
                                                  pool.cfg.cost_model, pool.cfg.health_timeout_s),
                        log_path=log_dir / f"{run.name}_{spec.kind}_{spec.policy}.log")
    try:
        wait_until(lambda: router_ready(spec, url, len(pool.urls)), [proc], cfg.router_startup_s, cfg.poll_s,
                   spec.name, cfg.log_tail_chars)
        started = time.monotonic()
        records = asyncio.run(run_load(reqs, LoadConfig(url, model=pool.model_name, rate=run.rate, seed=cfg.seed,
                                                        request_timeout_s=cfg.request_timeout_s), on_done=on_done))
        wall = time.monotonic() - started
    finally:
        proc.stop(cfg.stop_grace_s)
    after = pool.requests_served()
    ok = [r for r in records if r.error is None]
    return {"summary": {**summarize(ok), "errors": len(records) - len(ok)}, "wall_s": wall,
            "worker_requests": {w: after[w] - before.get(w, 0) for w in after},
            "error_samples": sorted({r.error for r in records if r.error})[:5]}


def device() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"kind": "cpu", "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def run(cfg: PeerBenchConfig, on_start: Callable[[str, str, int], None] | None = None,
        on_done: Callable[[RequestRecord], None] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every router over every workload; the results document (see `markdown`)."""
    from transformers import AutoTokenizer

    from ..models.demo import ensure_demo_model

    model = cfg.model or str(ensure_demo_model())
    specs = [RouterSpec.parse(r) for r in cfg.routers]
    routers: dict[str, dict[str, Any]] = {}
    for spec in specs:
        exe = None if spec.kind == "preble" else cfg.executable(spec.kind)
        if spec.kind != "preble" and exe is None:
            kind = PEER_KINDS[spec.kind]
            reason = f"{kind.executable} not found (give its path with --{spec.kind}-router or ${kind.env})"
            log(f"skipping {spec.name}: {reason}")
            routers[spec.name] = {"skipped": reason}
            continue
        routers[spec.name] = {"executable": exe or sys.executable, "version": router_version(spec, exe),
                              "command": router_command(spec, exe, "MODEL", ["WORKER_URL", "..."], 0, 0, cfg.cost_model,
                                                         cfg.health_timeout_s)}
    tokenizer = AutoTokenizer.from_pretrained(model)
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="preble-peer-routers-") as tmp:
        logs = Path(cfg.log_dir or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        pool = WorkerPool(model, cfg, logs)
        try:
            for wl in cfg.workloads:
                reqs = prepare_requests(wl, tokenizer, cfg)
                for spec in specs:
                    if "skipped" in routers[spec.name]:
                        continue
                    if on_start is not None:
                        on_start(wl.name, spec.name, len(reqs))
                    row = {"workload": wl.name, "router": spec.name, "rate": wl.rate, "num_requests": len(reqs),
                           "params": dict(wl.params)}
                    try:
                        row.update(_run_one(spec, routers[spec.name]["executable"], pool, model, reqs, wl, cfg,
                                            logs, on_done))
                    except (RuntimeError, TimeoutError, httpx.HTTPError) as err:
                        log(f"{wl.name} / {spec.name} failed: {err}")
                        row["failed"] = str(err)
                    runs.append(row)
        finally:
            pool.stop()
    return {"benchmark": "peer_routers", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **source_revision(), "device": device(),
            "model": {"path": model, "served_name": pool.model_name},
            "config": {**asdict(replace(cfg, model=model)), "workloads": [asdict(w) for w in cfg.workloads]},
            "routers": routers, "wall_s": time.monotonic() - started, "runs": runs}


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


COLUMNS = ("router", "answered", "mean latency s", "p50 s", "p99 s", "mean TTFT s", "p99 TTFT s", "mean TPOT s",
           "throughput req/s", "cached", "errors", "requests per worker")


def markdown(doc: Mapping[str, Any]) -> str:
    """One table per workload, a row per router."""
    d, cfg = doc["device"], doc["config"]
    lines = ["# Routers in front of the same Preble workers\n",
             f"{d['kind']}: {d['cpu']}, {d['cores']} cores, torch {d['torch']}; commit {doc['commit']}, "
             f"{doc['date']}. {cfg['workers']} workers of {Path(doc['model']['path']).name} "
             f"({cfg['num_pages']} KV pages of {cfg['page_size']} tokens, {cfg['max_num_batched_tokens']}-token "
             f"steps); shared prefixes cut to {cfg['prefix_cap']} tokens, outputs to {cfg['max_output_tokens']}; "
             f"seed {cfg['seed']}."]
    versions = [f"{name}: {r.get('version') or 'skipped (' + r['skipped'] + ')'}" for name, r in doc["routers"].items()]
    lines.append("Routers: " + "; ".join(versions) + ".\n")
    for wl in dict.fromkeys(r["workload"] for r in doc["runs"]):
        rows = [r for r in doc["runs"] if r["workload"] == wl]
        params = ", ".join(f"{k}={v}" for k, v in rows[0]["params"].items())
        lines += [f"## {wl}: {rows[0]['num_requests']} requests, Poisson {rows[0]['rate']:g}/s"
                  + (f" ({params})" if params else "") + "\n",
                  "| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 2) + "|---|"]
        for r in rows:
            if "failed" in r:
                lines.append(f"| {r['router']} | failed: {r['failed'][:120]} |" + " |" * (len(COLUMNS) - 2))
                continue
            s = r["summary"]
            lines.append("| " + " | ".join([
                r["router"], f"{s['requests']}/{r['num_requests']}", _num(s["mean_latency"], ".2f"),
                _num(s["p50_latency"], ".2f"), _num(s["p99_latency"], ".2f"), _num(s["mean_ttft"], ".2f"),
                _num(s["p99_ttft"], ".2f"), _num(s["mean_tpot"], ".3f"), _num(s["throughput"], ".3f"),
                _num(s["hit_ratio"], ".1%"), str(s["errors"]),
                "/".join(str(v) for v in r["worker_requests"].values())]) + " |")
        lines.append("")
    return "\n".join(lines)


def write(doc: Mapping[str, Any], out: Path) -> Path:
    """JSON at `out`, Markdown next to it; returns the Markdown's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(doc))
    return md
