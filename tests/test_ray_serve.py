"""`preble serve --ray`: workers placed as Ray actors, on a Ray instance the launcher starts and on
an existing cluster, both bound to loopback."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from preble.bench.local_cluster import LocalCluster, free_port_block

from .polling import wait_for

pytest.importorskip("ray")
openai = pytest.importorskip("openai")
# A Ray head and its actors take most of a minute to start on two cores: `make test-all` runs these.
pytestmark = pytest.mark.slow

# Ray advertises loopback only with the first; its head enables token authentication, which its
# clients then have to be told about.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
RAY_PORTS = 256  # the head's port and the worker ports given to Ray


def worker_processes(model: str) -> list[psutil.Process]:
    """The `preble worker` processes serving `model` (the tiny model's folder is unique to the test run)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "preble.cli" in cmd and "worker" in cmd and model in cmd:
            found.append(proc)
    return found


def listening_ips(procs: list[psutil.Process]) -> set[str]:
    return {c.laddr.ip for p in procs for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def healthy(url: str) -> int:
    return len(httpx.get(f"{url}/health", timeout=2).json()["healthy_workers"])


def check_serving(cluster: LocalCluster, model: str) -> list[psutil.Process]:
    """Requests answered through the router; the workers are children of Ray actors, on loopback."""
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused")
    prompt = "a shared system prompt for every request " * 4
    for i in range(4):
        out = client.completions.create(model=os.path.basename(model), prompt=prompt + str(i), max_tokens=4)
        assert out.usage.completion_tokens == 4
    workers = httpx.get(f"{cluster.url}/workers").json()
    assert sorted(w["worker_id"] for w in workers) == ["worker-0", "worker-1"]
    assert all(w["url"].startswith("http://127.0.0.1:") for w in workers)
    procs = worker_processes(model)
    assert len(procs) == 2
    for proc in procs:
        assert proc.parent().name().startswith("ray::WorkerActor")
        assert listening_ips([proc]) == {"127.0.0.1"}
    # One worker per share of the 2 CPUs: each gets one torch thread.
    assert all(p.cmdline()[p.cmdline().index("--threads") + 1] == "1" for p in procs)
    return procs


def test_serve_on_a_ray_instance_it_starts(tiny_models):
    model = tiny_models("llama")
    with LocalCluster(model, workers=2, serve_args=["--ray"], startup_timeout_s=180) as cluster:
        procs = check_serving(cluster, model)
        # Everything the launcher started (Ray's own processes too) listens on loopback only.
        tree = psutil.Process(cluster.proc.pid).children(recursive=True)
        ips = listening_ips([psutil.Process(cluster.proc.pid), *tree])
        assert ips and all(map(is_loopback, ips)), ips
        # A crashed worker is restarted by its actor on the same address and re-admitted.
        victim = procs[0]
        victim.send_signal(signal.SIGKILL)
        wait_for(lambda: healthy(cluster.url) == 1, 10)
        wait_for(lambda: healthy(cluster.url) == 2, 120)
        assert victim.pid not in {p.pid for p in worker_processes(model)}
        client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused")
        assert client.completions.create(model=os.path.basename(model), prompt="after the restart", max_tokens=2).usage.completion_tokens == 2
    wait_for(lambda: not worker_processes(model), 30)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_serve_on_an_existing_ray_cluster(tiny_models, monkeypatch):
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    model = tiny_models("llama")
    # Ray's own worker ports (10002-19999 by default) would overlap the free block: give it this
    # block's ports after the head's.
    port = free_port_block(RAY_PORTS)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    start = [ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--min-worker-port", str(port + 1), "--max-worker-port", str(port + RAY_PORTS - 1),
             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"]
    started = subprocess.run(start, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, f"ray start failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}"
    try:
        with LocalCluster(model, workers=2, serve_args=["--ray-address", f"127.0.0.1:{port}"],
                          startup_timeout_s=180) as cluster:
            procs = check_serving(cluster, model)
            # Placed by the cluster, not by the launcher: the workers are not its descendants.
            launched = {p.pid for p in psutil.Process(cluster.proc.pid).children(recursive=True)}
            assert not launched & {p.pid for p in procs}
        # Leaving the launcher stops its workers; the cluster itself stays up.
        wait_for(lambda: not worker_processes(model), 30)
        status = subprocess.run([ray_bin, "status", "--address", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120)
