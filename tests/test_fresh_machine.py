"""What a newcomer meets first: the entry points, a clean exit, readable output on an 80-column
terminal, a clear error when GPUs are missing, and no fork where a child may run torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from preble.launch import NotEnoughGPUs, gpu_plan

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preble", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=ROOT)


def test_python_dash_m_preble_is_the_command_line():
    result = _run(["--help"])
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "Usage: preble" in result.stdout


def test_help_fits_an_80_column_terminal():
    result = _run(["serve", "--help"], COLUMNS="80")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert "<bool>" not in result.stdout and "--log-json / --no-log-json" in result.stdout


def test_demo_table_keeps_every_header_and_value_whole_at_80_columns():
    from preble.bench.demo import TABLE_COLUMNS, summary_table

    row = {"mean_latency": 12.345, "p50_latency": 9.87, "p99_latency": 123.456, "mean_ttft": 10.5,
           "p99_ttft": 99.99, "hit_ratio": 0.75, "errors": 12}
    console = Console(width=80, record=True)
    console.print(summary_table({"round_robin": row, "e2": row}))
    text = console.export_text()
    assert "…" not in text
    for _, header in TABLE_COLUMNS:
        assert all(word in text for word in header.split())
    assert "123.46" in text and "round_robin" in text


def test_gpu_plan_gives_each_worker_its_own_gpus_or_says_what_is_missing():
    assert gpu_plan(2, 1, ["0", "1"]) == ["0", "1"]
    assert gpu_plan(2, 2, ["3", "5", "6", "7"]) == ["3,5", "6,7"]  # the launcher's own visible GPUs
    with pytest.raises(NotEnoughGPUs, match=r"need 2 GPUs .* shows 1; start at most 1 with --tp 1"):
        gpu_plan(2, 1, ["0"])
    with pytest.raises(NotEnoughGPUs, match=r"need 4 GPUs .* shows 1$"):
        gpu_plan(1, 4, ["0"])


def test_serve_on_missing_gpus_fails_in_one_line_before_starting_anything(tmp_path):
    result = _run(["serve", "--device", "cuda", "--workers", "64", "--model", str(tmp_path)],
                  CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 2
    out = (result.stdout + result.stderr).strip()
    assert out.count("\n") == 0 and "need 64 GPUs" in out and "Traceback" not in out


def test_tensor_parallel_llm_exits_quietly_without_close(tmp_path):
    from preble.models.tiny import write_tiny_model

    model = write_tiny_model(tmp_path / "llama", "llama")
    script = ("import sys\nfrom preble import LLM, SamplingParams\n"
              f"llm = LLM({str(model)!r}, tensor_parallel_size=2, num_pages=64)\n"
              "out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0.0))\n"
              "print(len(out[0].outputs[0].token_ids))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"
    assert "Traceback" not in result.stderr and "Connection closed" not in result.stderr


def _fork_hazards(tree: ast.AST) -> list[str]:
    """Calls that fork a child without exec: os.fork, a 'fork' context, and process pools or
    processes made without an explicit spawn/forkserver context (Linux's default is fork)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        args = [a.value for a in node.args if isinstance(a, ast.Constant)]
        if name == "fork" and owner == "os":
            found.append(f"line {node.lineno}: os.fork")
        if name in ("get_context", "set_start_method") and "fork" in args:
            found.append(f"line {node.lineno}: {name}('fork')")
        if name == "ProcessPoolExecutor" and "mp_context" not in {k.arg for k in node.keywords}:
            found.append(f"line {node.lineno}: ProcessPoolExecutor without mp_context")
        if owner == "multiprocessing" and name in ("Pool", "Process"):
            found.append(f"line {node.lineno}: multiprocessing.{name} (default start method)")
    return found


def test_no_child_process_is_forked_from_a_process_that_may_run_torch():
    """torch's and the tokenizers' thread pools do not survive a fork: a forked child that uses
    them can hang for ever (the demo model converted in a forked pool child did, on a machine
    where it was not converted yet). Children are spawned, or exec'd as commands."""
    hazards = {str(p.relative_to(ROOT)): h for p in sorted((ROOT / "preble").rglob("*.py"))
               if (h := _fork_hazards(ast.parse(p.read_text())))}
    assert hazards == {}
    planted = "os.fork()\nmultiprocessing.get_context('fork')\nProcessPoolExecutor(2)\nmultiprocessing.Pool(2)\n"
    assert len(_fork_hazards(ast.parse(planted))) == 4
