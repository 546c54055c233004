"""A routing policy at two commits, timed side by side on the router benchmark's workload.

Two `preble bench router` runs of different commits are hours apart, and a shared host's speed
drifts by tens of percent over that. This builds the working tree's policy and a base revision's
(extracted with `git archive` and imported as the package `preble_base`) in one process, feeds
both the same requests, KV events, load reports and completions, and times them decision by
decision, taking turns at going first. It fails if the two ever choose differently: what it
measures is a change in speed that changes no decision.

    python scripts/router_ab.py --base 39903c9 --out results/router_overhead_ab.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import msgspec

from preble.bench.router_overhead import IN_FLIGHT, WARMUP, PolicyBench, document
from preble.core.percentile import percentile
from preble.core.routing import DEFAULT_POLICY, make_policy

SIDES = ("base", "new")


def import_revision(rev: str, into: Path):
    """The routing package of `preble` at `rev`, imported as `preble_base.core.routing`."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "preble"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "preble").rename(into / "preble_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("preble_base.core.routing")


def _convert(obj, module_of_type):
    """The same message as the base revision's type of the same name."""
    base_type = getattr(module_of_type(type(obj)), type(obj).__name__)
    if isinstance(obj, msgspec.Struct):
        return base_type(**msgspec.structs.asdict(obj))
    return base_type(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})


class Twin:
    """Both policies behind one policy's interface: each call goes to both, timed apart."""

    def __init__(self, name: str, base_pkg, clock, seed: int) -> None:
        self.policies = {"new": make_policy(name, clock=clock, seed=seed),
                         "base": base_pkg.make_policy(name, clock=clock, seed=seed)}
        self.route_ns: dict[str, list[int]] = {s: [] for s in SIDES}
        self.total_ns: dict[str, list[int]] = {s: [] for s in SIDES}
        self._open = {s: 0 for s in SIDES}  # the current decision's time so far
        self._turn = 0
        self.decisions = 0

    def _base_module(self, cls):
        return importlib.import_module(cls.__module__.replace("preble.", "preble_base.", 1))

    def _both(self, method: str, *args) -> dict:
        """Call `method` on each side (which goes first alternates), adding its time to the decision's."""
        out = {}
        for side in (SIDES if self._turn % 2 else SIDES[::-1]):
            call_args = args if side == "new" else [_convert(a, self._base_module) if hasattr(a, "__dataclass_fields__")
                                                    or isinstance(a, msgspec.Struct) else a for a in args]
            t0 = time.perf_counter_ns()
            out[side] = getattr(self.policies[side], method)(*call_args)
            self._open[side] += time.perf_counter_ns() - t0
        return out

    def reset(self) -> None:
        for side in SIDES:
            self.route_ns[side].clear()
            self.total_ns[side].clear()
            self._open[side] = 0
        self.decisions = 0

    def route(self, req):
        if self.decisions:
            for side in SIDES:
                self.total_ns[side].append(self._open[side])
        self._open = {s: 0 for s in SIDES}
        self._turn += 1
        self.decisions += 1
        d = self._both("route", req)
        for side in SIDES:
            self.route_ns[side].append(self._open[side])
        new, base = d["new"], d["base"]
        if (new.worker_id, new.matched_tokens, str(new.branch)) != (base.worker_id, base.matched_tokens, str(base.branch)):
            raise AssertionError(f"decision {req.request_id}: the revisions chose {base} and {new}")
        return new

    def add_worker(self, worker_id: str) -> None:
        self._both("add_worker", worker_id)

    def on_kv_event(self, worker_id: str, event) -> None:
        self._both("on_kv_event", worker_id, event)

    def on_load(self, report) -> None:
        self._both("on_load", report)

    def on_done(self, done) -> None:
        self._both("on_done", done)

    def summary(self, side: str) -> dict:
        route, total = self.route_ns[side], self.total_ns[side]
        return {"p50_ms": percentile(route, 50) / 1e6, "p99_ms": percentile(route, 99) / 1e6,
                "decisions_per_s": len(total) / (sum(total) / 1e9),
                "p50_decision_ms": percentile(total, 50) / 1e6, "p99_decision_ms": percentile(total, 99) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the revision to compare the working tree with")
    ap.add_argument("--policy", default=DEFAULT_POLICY)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--prefixes", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    ap.add_argument("--rate", type=float, default=320.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_pkg = import_revision(args.base, Path(tmp))
        base_commit = subprocess.run(["git", "rev-parse", args.base], check=True, capture_output=True,
                                     text=True).stdout.strip()
        twin_box: list[Twin] = []

        def make(name, clock, seed):
            twin_box.append(Twin(name, base_pkg, clock, seed))
            return twin_box[0]

        bench = PolicyBench(args.policy, args.workers, args.prefixes, args.rate, args.seed, args.in_flight, make)
        twin = twin_box[0]
        bench.run_slice("tuned", WARMUP, 0)
        twin.reset()
        bench.run_slice("tuned", args.requests, 0)
    results = {side: twin.summary(side) for side in SIDES}
    results["base"]["commit"] = base_commit
    results["speedup"] = results["new"]["decisions_per_s"] / results["base"]["decisions_per_s"]
    for side in SIDES:
        r = results[side]
        print(f"{side}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, {r['decisions_per_s']:,.0f} decisions/s")
    print(f"identical decisions: {twin.decisions}; rate new / base: {results['speedup']:.2f}x")
    if args.out:
        doc = document(results, workers=args.workers, prefixes=args.prefixes, requests=args.requests,
                       policies=[args.policy], rate=args.rate, seed=args.seed, in_flight=args.in_flight,
                       base=base_commit, identical_decisions=twin.decisions)
        doc["benchmark"] = "router_overhead_ab"
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
