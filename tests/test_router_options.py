"""`preble router --cost-model --health-timeout` in a running router: the options as the command
line parses them, the app `preble router` builds from them, served in this process in front of a
real worker and a fake one that stops answering."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from preble.cli import app as cli
from preble.core.cost_model import CostModel
from preble.router.config import RouterServerConfig, WorkerPoolConfig
from preble.router.server import build_router_app

from .inproc import InProcessWorker, fake_worker_app, serve_app
from .polling import wait_for

PAGE = 4
COST_FILE = Path(__file__).resolve().parents[1] / "results" / "cost_models" / "h100_llama3-8b.json"
HEALTH_TIMEOUT_S = 0.5


def parsed_router_options(args: list[str], monkeypatch) -> RouterServerConfig:
    """What `preble router ARGS` would run with (its server is not started)."""
    import preble.router.server as server

    seen = []
    monkeypatch.setattr(server, "run_router", seen.append)
    result = CliRunner().invoke(cli, ["router", *args])
    assert result.exit_code == 0, result.output
    return seen[0]


def test_cost_model_and_health_timeout_are_in_effect(tiny_models, monkeypatch):
    model = tiny_models("llama")
    hung = threading.Event()
    with InProcessWorker(model, "w0", page_size=PAGE) as real, serve_app(fake_worker_app("w1", PAGE, hung)) as fake:
        cfg = parsed_router_options(["--model", model, "--worker", real.url, "--worker", fake, "--policy", "e2",
                                     "--cost-model", str(COST_FILE), "--health-timeout", str(HEALTH_TIMEOUT_S)],
                                    monkeypatch)
        assert (cfg.cost_model, cfg.health_timeout_s) == (str(COST_FILE), HEALTH_TIMEOUT_S)
        with serve_app(build_router_app(cfg)) as router:
            workers = lambda: {w["worker_id"]: w["healthy"] for w in httpx.get(f"{router}/workers").json()}  # noqa: E731
            wait_for(lambda: workers() == {"w0": True, "w1": True}, 10.0, step_s=0.02)

            # w1 stops answering: routed around once silent for the given timeout, sooner than
            # the default timeout allows (its last answer came at most one health check earlier).
            hung.set()
            hung_at = time.monotonic()
            wait_for(lambda: workers() == {"w0": True, "w1": False}, 10.0, step_s=0.01)
            noticed = time.monotonic() - hung_at
            interval = WorkerPoolConfig.load_interval_s
            assert noticed < RouterServerConfig.health_timeout_s - interval, noticed
            assert noticed > HEALTH_TIMEOUT_S - interval - 0.1, noticed  # 0.1: the last probe's round trip

            # e2 prices the request with the file's model: on an idle worker with room, its cost
            # is the prefill time of the whole prompt (no load, nothing to evict).
            prompt = [(3 * i) % 400 + 5 for i in range(40)]
            resp = httpx.post(f"{router}/v1/completions", json={"prompt": prompt, "max_tokens": 2}, timeout=30)
            assert resp.status_code == 200, resp.text
            decision = httpx.get(f"{router}/routes").json()[-1]
            measured = CostModel.load(COST_FILE).prefill_time(len(prompt), 0)
            assert decision["worker"] == "w0" and decision["costs"] == {"w0": pytest.approx(measured, rel=1e-12)}
            assert measured != pytest.approx(CostModel().prefill_time(len(prompt), 0), rel=0.5)
            hung.clear()
