"""Time RadixCache eviction against the size of the tree: a full cache of `leaves` cached prompts
(a shared 4-page system prompt, then 4 pages of their own), and then, per timed step, what a
scheduler does when memory is full: evict the pages a new prompt needs, cache the new prompt and
touch a random cached one. Prints one JSON object (microseconds per step, per tree size).

    python scripts/radix_evict_bench.py --out results/engine/radix_evict.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime

from preble.bench.provenance import host_machine, source_revision
from preble.core.pages import PageAllocator
from preble.core.radix_cache import RadixCache

PAGE = 16
SYSTEM_PAGES = 4
OWN_PAGES = 4


def _prompt(rng: random.Random, system: list[int]) -> list[int]:
    return system + [rng.randrange(1 << 30) for _ in range(OWN_PAGES * PAGE)]


def _cache(cache: RadixCache, prompt: list[int]) -> None:
    """Cache `prompt` as a finished request does: its cached pages, and new ones for the rest,
    evicting what they need."""
    have = cache.match_prefix(prompt).pages
    need = len(prompt) // PAGE - len(have)
    cache.evict(need - cache.allocator.num_free)
    cache.insert(prompt, have + cache.allocator.alloc(need))


def step_us(leaves: int, steps: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    alloc = PageAllocator(SYSTEM_PAGES + leaves * OWN_PAGES, PAGE)
    cache = RadixCache(alloc)
    system = [rng.randrange(1 << 30) for _ in range(SYSTEM_PAGES * PAGE)]
    prompts = []
    for _ in range(leaves):
        prompts.append(_prompt(rng, system))
        _cache(cache, prompts[-1])
    start = time.perf_counter()
    for _ in range(steps):
        prompts.append(_prompt(rng, system))
        _cache(cache, prompts[-1])
        cache.match_prefix(prompts[rng.randrange(len(prompts))])
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leaves", default="1000,10000,100000")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out")
    args = ap.parse_args()
    sizes = [int(x) for x in args.leaves.split(",")]
    doc = {"benchmark": "radix_evict", **source_revision(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "device": host_machine(), "steps": args.steps,
           "us_per_step": {str(n): round(step_us(n, args.steps), 2) for n in sizes}}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
