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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx

from ..processes import ChildProcess, stop_all, wait_until
from ..sim.report import summarize
from .loadgen import LoadConfig, LoadRequest, RequestRecord, run_load
from .local_cluster import free_port_block
from .peer_routers_config import (
    PEER_KINDS,
    Climb,
    PeerBenchConfig,
    RouterSpec,
    WorkloadRun,
)
from .provenance import source_revision
from .requests import load_request
from .workloads import WorkloadRequest, make_workload


class WorkerPool:
    """N `preble worker` processes on loopback ports, with no API key (the peer routers present
    none), started once for every run."""

    def __init__(self, model: str, cfg: PeerBenchConfig, log_dir: Path) -> None:
        self.cfg = cfg
        base = free_port_block(cfg.workers)
        self.urls = [f"http://127.0.0.1:{base + i}" for i in range(cfg.workers)]
        env = {k: v for k, v in os.environ.items() if k != "PREBLE_WORKER_API_KEY"}
        plan = cfg.core_plan()
        self.procs = [ChildProcess(f"worker-{i}", [sys.executable, "-m", "preble.cli", "worker", "--model", model,
                                                   "--host", "127.0.0.1", "--port", str(base + i),
                                                   "--worker-id", f"worker-{i}", *cfg.worker_args()],
                                   env, log_dir / f"worker-{i}.log", plan.workers[i] if plan else None)
                      for i in range(cfg.workers)]
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
             rate: float, seed: int, cfg: PeerBenchConfig, log_path: Path,
             on_done: Callable[[RequestRecord], None] | None) -> dict[str, Any]:
    """`reqs` through a fresh `spec` router at Poisson `rate` (arrivals drawn with `seed`), every
    worker's cache flushed first."""
    pool.flush()
    before = pool.requests_served()
    port = free_port_block(2)
    url = f"http://127.0.0.1:{port}"
    proc = ChildProcess(spec.name, router_command(spec, executable, model, pool.urls, port, port + 1,
                                                  pool.cfg.cost_model, pool.cfg.health_timeout_s),
                        log_path=log_path)
    try:
        wait_until(lambda: router_ready(spec, url, len(pool.urls)), [proc], cfg.router_startup_s, cfg.poll_s,
                   spec.name, cfg.log_tail_chars)
        started = time.monotonic()
        records = asyncio.run(run_load(reqs, LoadConfig(url, model=pool.model_name, rate=rate, seed=seed,
                                                        request_timeout_s=cfg.request_timeout_s), on_done=on_done))
        wall = time.monotonic() - started
    finally:
        proc.stop(cfg.stop_grace_s)
    after = pool.requests_served()
    ok = [r for r in records if r.error is None]
    return {"summary": {**summarize(ok), "errors": len(records) - len(ok)}, "wall_s": wall,
            "worker_requests": {w: after[w] - before.get(w, 0) for w in after},
            "error_samples": sorted({r.error for r in records if r.error})[:5]}


def find_knee(climb: Climb, executable: str | None, pool: WorkerPool, model: str, reqs: list[LoadRequest],
              wl: WorkloadRun, cfg: PeerBenchConfig, logs: Path) -> dict[str, Any]:
    """`climb.router`'s rate ladder on the first `climb.requests` of `reqs`, from `wl.rate` up,
    until a rung's p99 latency passes `climb.factor` times the lightest rung's: that rung's rate is
    the knee. A ladder that never gets there gives its last rung (`reached` False)."""
    spec = RouterSpec.parse(climb.router)
    rungs: list[dict[str, Any]] = []
    rate = wl.rate
    for k in range(climb.max_rungs):
        summary = _run_one(spec, executable, pool, model, reqs[:climb.requests], rate, cfg.seed, cfg,
                           logs / f"{wl.name}_climb{k}_{spec.kind}_{spec.policy}.log", None)["summary"]
        rungs.append({"rate": rate, "p99_latency": summary["p99_latency"], "mean_latency": summary["mean_latency"],
                      "errors": summary["errors"]})
        if k and summary["p99_latency"] > climb.factor * rungs[0]["p99_latency"]:
            return {"router": spec.name, "knee": rate, "reached": True, "rungs": rungs}
        rate *= climb.step
    return {"router": spec.name, "knee": rungs[-1]["rate"], "reached": False, "rungs": rungs}


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
            "python": platform.python_version(), "platform": platform.platform(),
            **({"gpu": torch.cuda.get_device_name(0)} if torch.cuda.is_available() else {})}


def run(cfg: PeerBenchConfig, on_start: Callable[[str, str, int], None] | None = None,
        on_done: Callable[[RequestRecord], None] | None = None,
        log: Callable[[str], None] = print,
        checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every router over every workload; the results document (see `markdown`). `checkpoint`
    gets the document so far (`complete` False) after each repeat, so that a run cut short by a
    time limit still leaves what it measured."""
    from transformers import AutoTokenizer

    from ..models.demo import ensure_demo_model

    model = cfg.model or str(ensure_demo_model())
    specs = [RouterSpec.parse(r) for r in cfg.routers]
    climb_exe = _climb_executable(cfg)
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
    knees: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="preble-peer-routers-") as tmp:
        logs = Path(cfg.log_dir or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        pool = WorkerPool(model, cfg, logs)
        plan, affinity = cfg.core_plan(), os.sched_getaffinity(0)
        try:
            if plan is not None:  # this process (the load generator) and the routers it starts
                os.sched_setaffinity(0, plan.rest)
            for wl in cfg.workloads:
                reqs = prepare_requests(wl, tokenizer, cfg)
                rate = wl.rate
                if cfg.climb is not None:
                    knees[wl.name] = find_knee(cfg.climb, climb_exe, pool, model, reqs, wl, cfg, logs)
                    rate = knees[wl.name]["knee"]
                    log(f"{wl.name}: {cfg.climb.router}'s knee at {rate:.3g}/s")
                for repeat in range(cfg.repeats):
                    runs += _compare(specs, routers, pool, model, reqs, wl, rate, repeat, cfg, logs, on_start,
                                     on_done, log)
                    if checkpoint is not None:
                        checkpoint(document(cfg, model, pool.model_name, routers, knees, runs, started, False))
        finally:
            os.sched_setaffinity(0, affinity)
            pool.stop()
    return document(cfg, model, pool.model_name, routers, knees, runs, started, True)


def document(cfg: PeerBenchConfig, model: str, served_name: str, routers: Mapping[str, Any],
             knees: Mapping[str, Any], runs: list[dict[str, Any]], started: float, complete: bool) -> dict[str, Any]:
    """The results document: provenance, configuration, each router's version, the knees and
    every run so far."""
    return {"benchmark": "peer_routers", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **source_revision(), "device": device(), "complete": complete,
            "model": {"path": model, "served_name": served_name},
            "config": {**asdict(replace(cfg, model=model, worker_threads=cfg.threads())),
                       "workloads": [asdict(w) for w in cfg.workloads]},
            "routers": dict(routers), "knees": dict(knees), "wall_s": time.monotonic() - started, "runs": list(runs)}


def _climb_executable(cfg: PeerBenchConfig) -> str | None:
    """The climbing router's executable (None for Preble's own); a peer that cannot be found is
    an error before anything starts."""
    if cfg.climb is None:
        return None
    climber = RouterSpec.parse(cfg.climb.router)
    if climber.kind == "preble":
        return None
    exe = cfg.executable(climber.kind)
    if exe is None:
        raise ValueError(f"the climb's router {climber.name}: {PEER_KINDS[climber.kind].executable} not found")
    return exe


def _compare(specs: Sequence[RouterSpec], routers: Mapping[str, Mapping[str, Any]], pool: WorkerPool, model: str,
             reqs: list[LoadRequest], wl: WorkloadRun, rate: float, repeat: int, cfg: PeerBenchConfig, logs: Path,
             on_start: Callable[[str, str, int], None] | None, on_done: Callable[[RequestRecord], None] | None,
             log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One repeat of every router on `wl` at `rate`, all with the same arrivals."""
    rows = []
    seed = cfg.seed + repeat
    for spec in specs:
        if "skipped" in routers[spec.name]:
            continue
        if on_start is not None:
            on_start(wl.name, spec.name, len(reqs))
        row = {"workload": wl.name, "router": spec.name, "rate": rate, "num_requests": len(reqs),
               "params": dict(wl.params), "repeat": repeat, "arrival_seed": seed}
        try:
            row.update(_run_one(spec, routers[spec.name]["executable"], pool, model, reqs, rate, seed, cfg,
                                logs / f"{wl.name}_{repeat}_{spec.kind}_{spec.policy}.log", on_done))
        except (RuntimeError, TimeoutError, httpx.HTTPError) as err:
            log(f"{wl.name} / {spec.name} failed: {err}")
            row["failed"] = str(err)
        rows.append(row)
    return rows


MERGE_SAME = ("commit", "dirty", "model")  # what the merged files must share, beside their config


def merge(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several results documents of the same code, machine kind and configuration, each with
    workloads of its own (e.g. one per call on a machine whose calls are time-limited), as one.
    ValueError where they differ in anything but their workloads."""
    first = docs[0]
    seen: set[str] = set()
    for doc in docs:
        for key in MERGE_SAME:
            if doc.get(key) != first.get(key):
                raise ValueError(f"the files differ in {key}: {first.get(key)!r} and {doc.get(key)!r}")
        if {k: v for k, v in doc["config"].items() if k != "workloads"} != \
                {k: v for k, v in first["config"].items() if k != "workloads"}:
            raise ValueError("the files were run with different configurations")
        if doc["device"].get("gpu") != first["device"].get("gpu") or doc["device"]["cpu"] != first["device"]["cpu"]:
            raise ValueError("the files were run on different kinds of machine")
        for name, router in doc["routers"].items():
            if name in first["routers"] and router != first["routers"][name]:
                raise ValueError(f"{name} differs between the files (version or command)")
        names = {w["name"] for w in doc["config"]["workloads"]}
        if names & seen:
            raise ValueError(f"workload(s) {sorted(names & seen)} in more than one file")
        seen |= names
    return {**first, "date": max(d["date"] for d in docs), "complete": all(d.get("complete", True) for d in docs),
            "config": {**first["config"], "workloads": [w for d in docs for w in d["config"]["workloads"]]},
            "routers": {k: v for d in docs for k, v in d["routers"].items()},
            "knees": {k: v for d in docs for k, v in d.get("knees", {}).items()},
            "wall_s": sum(d["wall_s"] for d in docs), "runs": [r for d in docs for r in d["runs"]],
            "merged_from": [{"date": d["date"], "workloads": [w["name"] for w in d["config"]["workloads"]],
                             "wall_s": d["wall_s"], "complete": d.get("complete", True)} for d in docs]}


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


COLUMNS = ("router", "answered", "mean latency s", "p50 s", "p99 s", "mean TTFT s", "p99 TTFT s", "mean TPOT s",
           "throughput req/s", "cached", "errors", "requests per worker")


def markdown(doc: Mapping[str, Any]) -> str:
    """One section per workload: its knee where one was climbed, the routers over the repeats
    where there are several, and a row per run."""
    d, cfg = doc["device"], doc["config"]
    gpu = f", workers on {cfg['device']} ({d['gpu']})" if d.get("gpu") and cfg.get("device", "cpu") != "cpu" else ""
    pinned = f", each pinned to {cfg['worker_threads']} cores of its own" if cfg.get("pin_cores") else ""
    lines = ["# Routers in front of the same Preble workers\n",
             f"{d['kind']}: {d['cpu']}, {d['cores']} cores, torch {d['torch']}{gpu}; commit {doc['commit']}, "
             f"{doc['date']}. {cfg['workers']} workers of {Path(doc['model']['path']).name}{pinned} "
             f"({cfg['num_pages']} KV pages of {cfg['page_size']} tokens, {cfg['max_num_batched_tokens']}-token "
             f"steps); shared prefixes cut to {cfg['prefix_cap']} tokens, outputs to {cfg['max_output_tokens']}; "
             f"seed {cfg['seed']}."
             + ("" if doc.get("complete", True) else " Cut short: only the runs below finished.")]
    versions = [f"{name}: {r.get('version') or 'skipped (' + r['skipped'] + ')'}" for name, r in doc["routers"].items()]
    lines.append("Routers: " + "; ".join(versions) + ".\n")
    if doc.get("merged_from"):
        lines.append(f"Merged from {len(doc['merged_from'])} files: " + "; ".join(
            f"{', '.join(m['workloads'])} ({m['date']})" for m in doc["merged_from"]) + ".\n")
    repeats = cfg.get("repeats", 1)
    for wl in dict.fromkeys(r["workload"] for r in doc["runs"]):
        rows = [r for r in doc["runs"] if r["workload"] == wl]
        params = ", ".join(f"{k}={v}" for k, v in rows[0]["params"].items())
        lines += [f"## {wl}: {rows[0]['num_requests']} requests, Poisson {rows[0]['rate']:.3g}/s"
                  + (f" ({params})" if params else "") + "\n"]
        if wl in doc.get("knees", {}):
            lines += [_knee_line(doc["knees"][wl]), ""]
        if repeats > 1:
            lines += _repeat_table(rows, repeats)
        lines += ["| " + " | ".join(COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 2) + "|---|"]
        lines += [_run_row(r, repeats) for r in rows]
        lines.append("")
    return "\n".join(lines)


def _knee_line(knee: Mapping[str, Any]) -> str:
    ladder = ", ".join(f"{r['rate']:.3g}/s: {_num(r['p99_latency'], '.2f')} s" for r in knee["rungs"])
    where = "knee" if knee["reached"] else "last rung (its ladder ended below the knee)"
    return f"Rate: {knee['router']}'s {where}, {knee['knee']:.3g}/s; p99 latency by rung: {ladder}."


def _repeat_table(rows: Sequence[Mapping[str, Any]], repeats: int) -> list[str]:
    """Per router: the mean over the repeats of its mean and p99 latency, with their range."""
    out = [f"Over {repeats} repeats (mean of the runs, lowest-highest):\n",
           "| router | runs | mean latency s | p99 latency s | answered | errors |", "|---|---:|---|---|---:|---:|"]
    for router in dict.fromkeys(r["router"] for r in rows):
        done = [r for r in rows if r["router"] == router and "failed" not in r]
        if not done:
            out.append(f"| {router} | 0 | - | - | - | - |")
            continue
        cells = []
        for key in ("mean_latency", "p99_latency"):
            xs = [r["summary"][key] for r in done]
            cells.append(f"{sum(xs) / len(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})")
        answered = sum(r["summary"]["requests"] for r in done)
        errors = sum(r["summary"]["errors"] for r in done)
        out.append(f"| {router} | {len(done)} | {cells[0]} | {cells[1]} | {answered} | {errors} |")
    return [*out, ""]


def _run_row(r: Mapping[str, Any], repeats: int) -> str:
    name = f"{r['router']} #{r.get('repeat', 0) + 1}" if repeats > 1 else r["router"]
    if "failed" in r:
        return f"| {name} | failed: {r['failed'][:120]} |" + " |" * (len(COLUMNS) - 2)
    s = r["summary"]
    return "| " + " | ".join([
        name, f"{s['requests']}/{r['num_requests']}", _num(s["mean_latency"], ".2f"),
        _num(s["p50_latency"], ".2f"), _num(s["p99_latency"], ".2f"), _num(s["mean_ttft"], ".2f"),
        _num(s["p99_ttft"], ".2f"), _num(s["mean_tpot"], ".3f"), _num(s["throughput"], ".3f"),
        _num(s["hit_ratio"], ".1%"), str(s["errors"]), "/".join(str(v) for v in r["worker_requests"].values())]) + " |"


def write(doc: Mapping[str, Any], out: Path) -> Path:
    """JSON at `out`, Markdown next to it; returns the Markdown's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(doc))
    return md
