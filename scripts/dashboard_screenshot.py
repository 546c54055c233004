"""Screenshot of the router's /dashboard under load, for the docs (docs/dashboard.png).

Two CPU workers of the demo model behind an e2 router, the toolbench workload (shared system
prompt, Zipf-popular tool documents) at a steady rate, and headless Chromium (Debian's
`chromium`, driven by Playwright) once the page has a minute of history.

    PREBLE_DATA=../shared/data python scripts/dashboard_screenshot.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import threading
import time

from transformers import AutoTokenizer

from preble.bench.demo import DemoConfig
from preble.bench.loadgen import LoadConfig, run_load
from preble.bench.local_cluster import LocalCluster
from preble.bench.requests import load_request
from preble.bench.workloads import make_workload
from preble.models.demo import ensure_demo_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/dashboard.png")
    ap.add_argument("--rate", type=float, default=1.5)
    ap.add_argument("--warmup-s", type=float, default=60.0)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    model = str(ensure_demo_model())
    tokenizer = AutoTokenizer.from_pretrained(model)
    wl = make_workload("toolbench", num_requests=400, seed=0, tokenizer=tokenizer)
    reqs = [load_request(r, max_tokens_cap=24) for r in wl.requests]
    with LocalCluster(model, 2, "e2", DemoConfig().worker_args()) as cluster:
        cfg = LoadConfig(cluster.url, rate=args.rate, duration=args.warmup_s + 30)
        loader = threading.Thread(target=lambda: asyncio.run(run_load(reqs, cfg)), daemon=True)
        loader.start()
        time.sleep(args.warmup_s)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{cluster.url}/dashboard")
            page.wait_for_selector("#decisions tr[data-request]")
            page.wait_for_timeout(2500)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        loader.join()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
