"""Each default is said once: the command line's options take theirs from the config dataclasses,
which it imports without torch or the web stack, so `preble --help` stays fast."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import MISSING, fields

import pytest
import typer

from preble.cli import app
from preble.core.scheduler_config import SchedulerConfig
from preble.engine.config import EngineConfig
from preble.launch_config import ServeConfig
from preble.router.config import RouterServerConfig
from preble.worker.config import WorkerConfig

# command -> the config dataclasses its options fill (an option: the first one's field of its name),
# and its options named apart from their field
SOURCES = {
    "worker": ((WorkerConfig, EngineConfig, SchedulerConfig),
               {"threads": (WorkerConfig, "num_threads"), "tp": (EngineConfig, "tensor_parallel_size")}),
    "router": ((RouterServerConfig,), {"health_timeout": (RouterServerConfig, "health_timeout_s")}),
    "serve": ((ServeConfig,), {}),
}


def field_default(classes, name: str):
    """The default of the first of `classes` with a field `name`; MISSING: none, or it has none."""
    for cls in classes:
        for f in fields(cls):
            if f.name == name:
                return f.default
    return MISSING


@pytest.mark.parametrize("command", SOURCES)
def test_options_default_to_their_config_fields(command):
    classes, renamed = SOURCES[command]
    compared = {}
    for param in typer.main.get_command(app).commands[command].params:
        cls, name = renamed.get(param.name, (None, param.name))
        default = field_default((cls,) if cls else classes, name)
        if default is not MISSING:
            compared[param.name] = (param.default, default)
    assert {k: v for k, v in compared.items() if v[0] != v[1]} == {}
    assert {"host", "port", "max_inflight", *renamed} <= set(compared)


@pytest.mark.parametrize("command", ["compare", "grid"])
def test_simulator_benchmarks_default_to_their_config(command):
    """`bench compare` and `bench grid` read their defaults from CompareConfig and GridConfig (a
    tuple field is written comma-separated). The grid's --policies '' means all of them, its
    --ablations is a switch over the config's list and its --jobs is one per core."""
    from preble.bench.compare import CompareConfig
    from preble.bench.grid import GridConfig

    configs = {"compare": (CompareConfig(),), "grid": (GridConfig(), GridConfig().base)}[command]
    apart = {"compare": set(), "grid": {"policies", "ablations", "jobs"}}[command]
    bench = typer.main.get_command(app).commands["bench"]
    compared = {}
    for param in bench.commands[command].params:
        for cfg in configs:
            name = {"duration": "duration_s"}.get(param.name, param.name)
            if name in {f.name for f in fields(cfg)} and param.default is not None and name not in apart:
                value = getattr(cfg, name)
                value = ",".join(map(str, value)) if isinstance(value, tuple) else value
                compared[param.name] = (type(value)(param.default), value)
                break
    assert {k: v for k, v in compared.items() if v[0] != v[1]} == {}
    assert {"workloads", "replicas", "duration", "max_requests", "cost_model"} <= set(compared)


def test_the_soak_defaults_to_its_config():
    """Every option of `bench soak` is a SoakConfig field (--duration: duration_s) and defaults to it."""
    from preble.bench.soak_config import SoakConfig

    bench = typer.main.get_command(app).commands["bench"]
    names = {f.name: f.default for f in fields(SoakConfig)}
    compared = {}
    for param in bench.commands["soak"].params:
        name = {"duration": "duration_s"}.get(param.name, param.name)
        if name != "out":
            compared[param.name] = (param.default, names.get(name, MISSING))
    assert {k: v for k, v in compared.items() if v[0] != v[1]} == {}
    assert {"duration", "workers", "policy", "model", "rate", "clients", "seed"} == set(compared)


def test_the_command_line_imports_neither_torch_nor_the_web_stack():
    heavy = ("torch", "transformers", "fastapi", "uvicorn", "httpx")
    code = f"import sys, preble.cli; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_router_never_imports_the_engine():
    """The router runs where no engine does (in front of external engines, on a CPU host)."""
    code = "import sys, preble.router.server; print([m for m in sys.modules if m.startswith('preble.engine')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
