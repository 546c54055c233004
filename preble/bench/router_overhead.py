"""Router overhead: time per routing decision and memory at cluster scale, without GPUs.

A synthetic cluster: `workers` simulated workers whose caches hold `prefixes` shared prefixes
(a 512-token system prompt shared by 50 prefixes, then a 128-token document), fed to the policy
as KV events, with periodic LoadReports. Requests pick a prefix by Zipf popularity and add a
unique question; a fifth bring a prefix no worker holds (a new document, and every 50th a new
system prompt), so the mix has decisions of every kind: cache hits, misses, E2's explores. Each decision is what a real router does per request: `route()`, the KV events
the chosen worker then emits (its new pages stored, its least recently used ones removed), one
worker's LoadReport and one earlier request's `on_done`. The clock is simulated (`rate` requests
per second), so the run spans more than E2's window and its collector is exercised.

Each policy runs in a process of its own, so `rss_mb` (peak resident memory of that process, the
interpreter and its imports included) is per policy; the processes build their clusters at once,
then take turns on one core, a slice of decisions each (`SLICES` per phase), so that a host whose
speed drifts over the run (shared, throttled) weighs on every policy alike. Token ids are generated from
seeds on demand, so the workload itself holds little memory; `policy_mb` is the growth of the
process from just before the build (imports excluded) to its peak.

Python's cyclic garbage collector, not the policy, makes the latency tail: with its default
thresholds a young collection runs every ~700 net allocations, i.e. within ~1-2% of decisions,
and costs a millisecond or more once the process holds a large tree. A router process should
freeze its state after start-up and collect young objects less often (`ROUTER_GC_THRESHOLD`): the
same total collector time, hitting far fewer decisions. The headline numbers are measured so;
`default_gc` holds those with Python's defaults (measured first, on half as many decisions).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import resource
import time
import traceback
from array import array
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from ..core.kv_events import ROOT_HASH, PagesRemoved, PagesStored, chain_hashes
from ..core.messages import LoadReport
from ..core.percentile import percentile
from ..core.routing import DEFAULT_POLICY, make_policy
from ..core.routing.base import RequestDone, RouteRequest
from ..router.gc_tuning import tune_gc

PAGE_SIZE = 16
SYSTEM_TOKENS = 512  # shared by PREFIXES_PER_SYSTEM prefixes
PREFIXES_PER_SYSTEM = 50
DOC_TOKENS = 128  # what makes each prefix distinct
QUESTION_TOKENS = (32, 64)  # unique per request
MAX_TOKENS = 128
OUTPUT_TOKENS = 100
ZIPF_S = 1.1  # popularity exponent of prefixes
REPLICATED_FRACTION = 0.01  # the most popular prefixes start on 3 workers, the rest on 1
QUESTIONS_KEPT = 4  # question leaves a worker keeps per prefix before removing the oldest
NEW_PREFIX_FRACTION = 0.2  # requests with a document (and every 50th a system prompt) no worker holds yet
IN_FLIGHT = 256  # requests between a route and its on_done (default; fewer leave workers idle)
WARMUP = 500  # decisions not timed, at the start of each phase
SLICES = 20  # each phase's timed decisions come in this many slices, the policies taking turns
VOCAB = 128_000


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [x % VOCAB for x in array("I", rng.randbytes(4 * n))]


class _Workload:
    """Deterministic token ids and page hashes of every prefix, computed on demand."""

    def __init__(self, prefixes: int, seed: int) -> None:
        self.prefixes = prefixes
        self.seed = seed
        self._hash_cache: dict[int, tuple[list[int], list[int]]] = {}

    def system(self, p: int) -> list[int]:
        return _tokens(random.Random(self.seed * 1_000_003 + p // PREFIXES_PER_SYSTEM), SYSTEM_TOKENS)

    def doc(self, p: int) -> list[int]:
        return _tokens(random.Random(~(self.seed * 1_000_003 + p)), DOC_TOKENS)

    def hashes(self, p: int) -> tuple[list[int], list[int]]:
        """(system page hashes, document page hashes) of prefix p."""
        hit = self._hash_cache.get(p)
        if hit is None:
            sys_h = chain_hashes(self.system(p), PAGE_SIZE)
            hit = (sys_h, chain_hashes(self.doc(p), PAGE_SIZE, sys_h[-1]))
            if len(self._hash_cache) > 4096:
                self._hash_cache.pop(next(iter(self._hash_cache)))
            self._hash_cache[p] = hit
        return hit


class _SimWorker:
    """What a worker caches, at prefix granularity: enough to emit realistic KV events."""

    def __init__(self, wid: str, capacity: int) -> None:
        self.wid = wid
        self.capacity = capacity  # prefixes
        self.prefixes: OrderedDict[int, list[list[int]] | None] = OrderedDict()  # prefix -> question leaves
        self.systems: dict[int, int] = {}  # system id -> prefixes of it held

    def store(self, wl: _Workload, p: int, question: list[int] | None) -> list:
        events: list = []
        sys_h, doc_h = wl.hashes(p)
        if p not in self.prefixes:
            while len(self.prefixes) >= self.capacity:
                events.append(self._evict(wl))
            s = p // PREFIXES_PER_SYSTEM
            if not self.systems.get(s):
                events.append(PagesStored(ROOT_HASH, sys_h, wl.system(p)))
            self.systems[s] = self.systems.get(s, 0) + 1
            events.append(PagesStored(sys_h[-1], doc_h, wl.doc(p)))
            self.prefixes[p] = None
        self.prefixes.move_to_end(p)
        if question:
            full = question[:len(question) - len(question) % PAGE_SIZE]
            if full:
                q_h = chain_hashes(full, PAGE_SIZE, doc_h[-1])
                leaves = self.prefixes[p] or []
                leaves.append(q_h)
                events.append(PagesStored(doc_h[-1], q_h, full))
                if len(leaves) > QUESTIONS_KEPT:
                    events.append(PagesRemoved(leaves.pop(0)))
                self.prefixes[p] = leaves
        return events

    def _evict(self, wl: _Workload) -> PagesRemoved:
        p, leaves = self.prefixes.popitem(last=False)
        sys_h, doc_h = wl.hashes(p)
        removed = [h for leaf in leaves or () for h in leaf] + doc_h
        s = p // PREFIXES_PER_SYSTEM
        self.systems[s] -= 1
        if not self.systems[s]:
            removed += sys_h
        return PagesRemoved(removed)


def _rss_mb() -> float:
    """Peak resident memory of this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class PolicyBench:
    """One policy, its cluster built, timed a slice at a time: first with Python's collector as it
    comes (the `default_gc` phase), then as a router should run it (`tuned`; see module doc).
    `make` builds the policy, as `make_policy` does (`scripts/router_ab.py` passes one that builds
    a policy at two commits behind one interface)."""

    def __init__(self, policy_name: str, workers: int, prefixes: int, rate: float, seed: int,
                 in_flight: int, make: Callable[..., Any] = make_policy) -> None:
        self.base_rss = _current_rss_mb()
        now = [0.0]
        self.policy = policy = make(policy_name, clock=lambda: now[0], seed=seed)
        wl = _Workload(prefixes, seed)
        rng = random.Random(seed)
        wids = [f"w{i}" for i in range(workers)]
        for w in wids:
            policy.add_worker(w)
        # Initial placement: each prefix on one worker, the most popular on three.
        order = list(range(prefixes))
        rng.shuffle(order)  # popularity rank -> prefix
        replicated = set(order[:max(1, int(REPLICATED_FRACTION * prefixes))])
        capacity = int(1.25 * prefixes * (1 + 2 * REPLICATED_FRACTION) / workers) + 1
        sims = {w: _SimWorker(w, capacity) for w in wids}
        for p in range(prefixes):
            homes = {p % workers} | ({(p * 7 + 1) % workers, (p * 13 + 2) % workers} if p in replicated else set())
            for h in homes:
                for ev in sims[wids[h]].store(wl, p, None):
                    policy.on_kv_event(wids[h], ev)
        if policy_name == "cache_aware":  # its tree learns only from routing: show it every prefix once
            for p in range(prefixes):
                d = policy.route(RouteRequest(f"warm{p}", wl.system(p) + wl.doc(p), MAX_TOKENS))
                policy.on_done(RequestDone(f"warm{p}", d.worker_id, SYSTEM_TOKENS + DOC_TOKENS, 0, 1, 0.1, 0.2))
        gc.collect()
        self.build_rss = _rss_mb()
        self.loop = _Loop(policy, wl, sims, wids, prefixes, capacity, order, rate, seed, now, in_flight)
        self.phases = {"default_gc": _Timings(), "tuned": _Timings()}
        self._old_gc: tuple[int, int, int] | None = None

    def run_slice(self, phase: str, decisions: int, warmup: int) -> None:
        if phase == "tuned" and self._old_gc is None:
            self._old_gc = tune_gc()
        self.loop.timed(decisions, warmup, self.phases[phase])

    def finish(self) -> dict:
        if self._old_gc is not None:
            gc.set_threshold(*self._old_gc)
            gc.unfreeze()
        out = self.phases["tuned"].summary()
        default_gc = self.phases["default_gc"].summary()
        out.update(rss_mb=_rss_mb(), rss_before_build_mb=self.base_rss, rss_after_build_mb=self.build_rss,
                   policy_mb=_rss_mb() - self.base_rss,
                   default_gc={k: default_gc[k] for k in ("p50_ms", "p99_ms", "decisions_per_s",
                                                          "max_route_ms", "gc_pauses")})
        tree = getattr(self.policy, "tree", None)
        if tree is not None and hasattr(tree, "num_nodes"):
            out["tree_nodes"] = tree.num_nodes
        return out


def _pin_to_one_core() -> None:
    """Every policy's process on the same core: the timings then share the machine's state."""
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    except (AttributeError, OSError):
        pass


def _serve_policy(conn, args: tuple) -> None:
    """A policy's own process: build, say so, then run the slices asked for until `finish`."""
    try:
        bench = PolicyBench(*args)
        conn.send(("built", None))
        _pin_to_one_core()
        while (msg := conn.recv())[0] == "slice":
            bench.run_slice(*msg[1:])
            conn.send(("done", None))
        conn.send(("results", bench.finish()))
    except Exception:
        conn.send(("error", traceback.format_exc()))


class _Remote:
    """The parent's handle on a policy's process."""

    def __init__(self, ctx, args: tuple) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve_policy, args=(child, args), daemon=True)
        self.process.start()

    def _reply(self) -> object:
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"router benchmark process failed:\n{value}")
        return value

    def built(self) -> None:
        self._reply()

    def run_slice(self, phase: str, decisions: int, warmup: int) -> None:
        self.conn.send(("slice", phase, decisions, warmup))
        self._reply()

    def finish(self) -> dict:
        self.conn.send(("finish",))
        out = self._reply()
        self.process.join()
        return out


def run(workers: int = 64, prefixes: int = 100_000, requests: int = 60_000,
        policies: tuple[str, ...] = (DEFAULT_POLICY, "e2", "cache_aware"), seed: int = 0, rate: float = 320.0,
        isolate: bool = True, in_flight: int = IN_FLIGHT, slices: int = SLICES,
        warmup: int = WARMUP) -> dict[str, dict]:
    """Per policy: p50_ms and p99_ms of route(), decisions_per_s (route plus the event, load and
    done calls that come with each decision), rss_mb (peak, whole process: the interpreter and
    its imports included, see rss_before_build_mb), and details. `isolate` runs each policy in
    its own process (needed for a per-policy rss_mb). The timed decisions run in `slices` slices
    per policy, the policies taking turns, so that a machine whose speed drifts during the run
    (a shared or throttled host) slows each policy alike. `in_flight`: requests routed and not
    yet done; with few, most workers are idle, which is when the default prices copies. Each
    phase starts with `warmup` untimed decisions."""
    args = [(name, workers, prefixes, rate, seed, in_flight) for name in policies]
    if isolate:
        ctx = multiprocessing.get_context("spawn")
        benches = [_Remote(ctx, a) for a in args]  # built in parallel, timed on one core
        for b in benches:
            b.built()
    else:
        benches = [PolicyBench(*a) for a in args]
    for phase, decisions in (("default_gc", requests // 2), ("tuned", requests)):
        for k in range(slices):
            share = decisions * (k + 1) // slices - decisions * k // slices
            for b in benches:
                b.run_slice(phase, share, warmup if k == 0 else 0)
    return {name: b.finish() for name, b in zip(policies, benches)}


def document(results: dict[str, dict], **params) -> dict:
    """The results file: numbers plus what they were measured on, when and at which commit."""
    import datetime

    from .provenance import host_machine, source_revision

    return {
        "benchmark": "router_overhead",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **source_revision(),
        "device": {**host_machine(), "cores_used": 1},
        "parameters": params,
        "results": results,
    }


class _Loop:
    """The timed part: requests, the events they cause, load reports and completions."""

    def __init__(self, policy, wl: _Workload, sims: dict, wids: list[str], prefixes: int,
                 capacity: int, order: list[int], rate: float, seed: int, now: list[float],
                 in_flight: int) -> None:
        self.policy, self.wl, self.sims, self.wids = policy, wl, sims, wids
        self.in_flight = in_flight
        self.order, self.rate, self.now = order, rate, now
        self.rng = random.Random(seed + 1)
        self.cum = list(accumulate(1.0 / (r + 1) ** ZIPF_S for r in range(prefixes)))
        self.kv_pages = capacity * (SYSTEM_TOKENS + DOC_TOKENS + QUESTIONS_KEPT * 48) // PAGE_SIZE
        self.inflight: deque[tuple[RouteRequest, str, int]] = deque()
        self.count = 0

    def timed(self, requests: int, warmup: int, into: _Timings) -> None:
        """`warmup` untimed decisions, then `requests` timed ones, added to `into`."""
        policy, rng, wl, wids = self.policy, self.rng, self.wl, self.wids
        pauses = into.pauses
        started = [0.0]

        def on_gc(phase: str, info: dict) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses.append(time.perf_counter() - started[0])

        route_ns, total_ns, branches = into.route_ns, into.total_ns, into.branches
        total_w = self.cum[-1]
        for i in range(requests + warmup):
            if i == warmup:
                gc.callbacks.append(on_gc)
            self.count += 1
            self.now[0] += 1.0 / self.rate
            if rng.random() < NEW_PREFIX_FRACTION:  # a prefix no worker holds: the policy explores
                p = len(self.order) + self.count
            else:
                p = self.order[bisect_left(self.cum, rng.random() * total_w)]
            question = _tokens(rng, rng.randint(*QUESTION_TOKENS))
            req = RouteRequest(f"r{self.count}", wl.system(p) + wl.doc(p) + question, MAX_TOKENS)
            report = LoadReport(wids[self.count % len(wids)], self.now[0], running=rng.randint(4, 32),
                                waiting=rng.randint(0, 8), waiting_tokens=rng.randint(0, 4000),
                                kv_used_pages=self.kv_pages, kv_evictable_pages=int(0.8 * self.kv_pages),
                                kv_total_pages=self.kv_pages, page_size=PAGE_SIZE,
                                hit_ratio=rng.uniform(0.3, 0.75), tpot=rng.uniform(0.02, 0.04),
                                num_preemptions=0)
            done = None
            if len(self.inflight) >= self.in_flight:
                r, rw, matched = self.inflight.popleft()
                done = RequestDone(r.request_id, rw, len(r.token_ids), matched, OUTPUT_TOKENS,
                                   rng.uniform(0.05, 0.5), rng.uniform(2.0, 4.0))
            t0 = time.perf_counter_ns()
            d = policy.route(req)
            t1 = time.perf_counter_ns()
            events = self.sims[d.worker_id].store(wl, p, question)
            t2 = time.perf_counter_ns()
            for ev in events:
                policy.on_kv_event(d.worker_id, ev)
            policy.on_load(report)
            if done is not None:
                policy.on_done(done)
            t3 = time.perf_counter_ns()
            self.inflight.append((req, d.worker_id, d.matched_tokens))
            if i >= warmup:
                route_ns.append(t1 - t0)
                total_ns.append((t1 - t0) + (t3 - t2))
                branches[d.branch] = branches.get(d.branch, 0) + 1
        gc.callbacks.remove(on_gc)


class _Timings:
    """What one phase measured, over all its slices."""

    def __init__(self) -> None:
        self.route_ns: list[int] = []
        self.total_ns: list[int] = []
        self.branches: dict[str, int] = {}
        self.pauses: list[float] = []

    def summary(self) -> dict:
        route_ns, total_ns, pauses = self.route_ns, self.total_ns, self.pauses
        return {
            "p50_ms": percentile(route_ns, 50) / 1e6,
            "p99_ms": percentile(route_ns, 99) / 1e6,
            "decisions_per_s": len(total_ns) / (sum(total_ns) / 1e9),
            "p50_decision_ms": percentile(total_ns, 50) / 1e6,
            "p99_decision_ms": percentile(total_ns, 99) / 1e6,
            "max_route_ms": max(route_ns) / 1e6,
            "branches": dict(sorted(self.branches.items())),
            "gc_pauses": {"count": len(pauses), "max_ms": max(pauses, default=0.0) * 1e3,
                          "total_ms": sum(pauses) * 1e3},
        }
