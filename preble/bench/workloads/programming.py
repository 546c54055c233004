"""Programming: a fixed few-shot demonstration prefix (~2,400 tokens), then a new problem.

The demonstration is a set of competitive-programming style problem/solution pairs written for
this project (:data:`EXEMPLARS`). Problems are drawn from parameterised templates with seeded
values (names, limits, example inputs), so every prompt differs after the shared prefix.
``max_tokens`` is log-normal (median ``median_tokens`` = 160) clipped to
``[min_tokens, max_tokens]`` (32..512).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Workload, WorkloadRequest, count_tokens, register

INSTRUCTION = (
    "You are an expert Python programmer. For each problem, read the statement carefully and "
    "write a complete program that reads from standard input and writes to standard output. "
    "Use efficient algorithms: the time limit is 2 seconds. Here are some solved examples.\n\n"
)

EXEMPLARS = [
    (
        "Given an array of n integers, find the length of the longest contiguous subarray whose "
        "sum is at most k. Input: the first line has n and k (1 <= n <= 2*10^5, 0 <= k <= 10^14); "
        "the second line has n non-negative integers a_i (a_i <= 10^9). Output one integer.",
        "import sys\n\ndef main():\n    data = sys.stdin.buffer.read().split()\n    n, k = int(data[0]), int(data[1])\n"
        "    a = list(map(int, data[2:2 + n]))\n    best = 0\n    left = 0\n    total = 0\n"
        "    for right in range(n):\n        total += a[right]\n        while total > k:\n"
        "            total -= a[left]\n            left += 1\n        best = max(best, right - left + 1)\n"
        "    print(best)\n\nmain()\n",
    ),
    (
        "There are n cities and m bidirectional roads, each with a travel time. Find the shortest "
        "travel time from city 1 to every city, or -1 if a city is unreachable. Input: n and m "
        "(n, m <= 2*10^5), then m lines u v w (1 <= w <= 10^9). Output n integers.",
        "import sys, heapq\n\ndef main():\n    data = sys.stdin.buffer.read().split()\n    n, m = int(data[0]), int(data[1])\n"
        "    adj = [[] for _ in range(n + 1)]\n    idx = 2\n    for _ in range(m):\n"
        "        u, v, w = int(data[idx]), int(data[idx + 1]), int(data[idx + 2])\n        idx += 3\n"
        "        adj[u].append((v, w))\n        adj[v].append((u, w))\n    INF = float('inf')\n"
        "    dist = [INF] * (n + 1)\n    dist[1] = 0\n    heap = [(0, 1)]\n    while heap:\n"
        "        d, u = heapq.heappop(heap)\n        if d > dist[u]:\n            continue\n"
        "        for v, w in adj[u]:\n            nd = d + w\n            if nd < dist[v]:\n"
        "                dist[v] = nd\n                heapq.heappush(heap, (nd, v))\n"
        "    print(' '.join(str(d) if d < INF else '-1' for d in dist[1:]))\n\nmain()\n",
    ),
    (
        "A string is called balanced if every prefix has at least as many '(' as ')' and the whole "
        "string has equally many of both. Given a string s of brackets (|s| <= 10^6), find the "
        "minimum number of characters to insert to make it balanced.",
        "import sys\n\ndef main():\n    s = sys.stdin.readline().strip()\n    open_count = 0\n    inserts = 0\n"
        "    for ch in s:\n        if ch == '(':\n            open_count += 1\n        elif open_count > 0:\n"
        "            open_count -= 1\n        else:\n            inserts += 1\n    print(inserts + open_count)\n\nmain()\n",
    ),
    (
        "You are given n items, each with a weight w_i and a value v_i, and a knapsack of capacity "
        "W (n <= 100, W <= 10^5). Find the maximum total value of items whose total weight is at "
        "most W. Each item can be taken at most once.",
        "import sys\n\ndef main():\n    data = sys.stdin.read().split()\n    n, cap = int(data[0]), int(data[1])\n"
        "    best = [0] * (cap + 1)\n    for i in range(n):\n        w, v = int(data[2 + 2 * i]), int(data[3 + 2 * i])\n"
        "        for c in range(cap, w - 1, -1):\n            cand = best[c - w] + v\n            if cand > best[c]:\n"
        "                best[c] = cand\n    print(best[cap])\n\nmain()\n",
    ),
    (
        "Process q queries on an initially empty multiset of integers: '+ x' adds x, '- x' removes "
        "one copy of x (it is present), '? l r' prints how many elements lie in [l, r]. All values "
        "are at most 10^9 and q <= 2*10^5. Answer the queries offline.",
        "import sys\nfrom bisect import bisect_left, bisect_right\n\ndef main():\n"
        "    lines = sys.stdin.read().split('\\n')\n    q = int(lines[0])\n    ops = [ln.split() for ln in lines[1:1 + q]]\n"
        "    values = sorted({int(o[1]) for o in ops if o[0] in '+-'})\n    size = len(values)\n"
        "    tree = [0] * (size + 1)\n\n    def update(i, delta):\n        i += 1\n        while i <= size:\n"
        "            tree[i] += delta\n            i += i & -i\n\n    def query(i):\n        s = 0\n"
        "        while i > 0:\n            s += tree[i]\n            i -= i & -i\n        return s\n\n    out = []\n"
        "    for o in ops:\n        if o[0] == '+':\n            update(bisect_left(values, int(o[1])), 1)\n"
        "        elif o[0] == '-':\n            update(bisect_left(values, int(o[1])), -1)\n        else:\n"
        "            lo = bisect_left(values, int(o[1]))\n            hi = bisect_right(values, int(o[2]))\n"
        "            out.append(query(hi) - query(lo))\n    print('\\n'.join(map(str, out)))\n\nmain()\n",
    ),
    (
        "Given a grid of n rows and m columns with '.' for free cells and '#' for walls, count the "
        "connected components of free cells (cells are adjacent if they share a side). n, m <= 1000.",
        "import sys\nfrom collections import deque\n\ndef main():\n    data = sys.stdin.read().split()\n"
        "    n, m = int(data[0]), int(data[1])\n    grid = data[2:2 + n]\n    seen = [[False] * m for _ in range(n)]\n"
        "    components = 0\n    for i in range(n):\n        for j in range(m):\n"
        "            if grid[i][j] == '.' and not seen[i][j]:\n                components += 1\n"
        "                seen[i][j] = True\n                queue = deque([(i, j)])\n                while queue:\n"
        "                    x, y = queue.popleft()\n                    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):\n"
        "                        nx, ny = x + dx, y + dy\n"
        "                        if 0 <= nx < n and 0 <= ny < m and grid[nx][ny] == '.' and not seen[nx][ny]:\n"
        "                            seen[nx][ny] = True\n                            queue.append((nx, ny))\n"
        "    print(components)\n\nmain()\n",
    ),
    (
        "Compute the number of distinct subsequences of a string s equal to a string t, modulo "
        "10^9+7 (|s|, |t| <= 5000).",
        "import sys\n\nMOD = 10**9 + 7\n\ndef main():\n    s = sys.stdin.readline().strip()\n    t = sys.stdin.readline().strip()\n"
        "    ways = [0] * (len(t) + 1)\n    ways[0] = 1\n    for ch in s:\n        for j in range(len(t), 0, -1):\n"
        "            if t[j - 1] == ch:\n                ways[j] = (ways[j] + ways[j - 1]) % MOD\n    print(ways[len(t)])\n\nmain()\n",
    ),
    (
        "n tasks have deadlines d_i and profits p_i; each task takes one unit of time and time "
        "starts at 0. Choose tasks to maximise the total profit of tasks finished by their "
        "deadlines (n <= 2*10^5).",
        "import sys, heapq\n\ndef main():\n    data = sys.stdin.buffer.read().split()\n    n = int(data[0])\n"
        "    tasks = sorted((int(data[1 + 2 * i]), int(data[2 + 2 * i])) for i in range(n))\n    chosen = []\n"
        "    for deadline, profit in tasks:\n        heapq.heappush(chosen, profit)\n        if len(chosen) > deadline:\n"
        "            heapq.heappop(chosen)\n    print(sum(chosen))\n\nmain()\n",
    ),
    (
        "Given a tree with n vertices (n <= 2*10^5), find its diameter: the number of edges on the "
        "longest simple path. Input: n, then n-1 edges u v.",
        "import sys\nfrom collections import deque\n\ndef farthest(adj, start, n):\n    dist = [-1] * (n + 1)\n"
        "    dist[start] = 0\n    queue = deque([start])\n    last = start\n    while queue:\n        u = queue.popleft()\n"
        "        last = u\n        for v in adj[u]:\n            if dist[v] < 0:\n                dist[v] = dist[u] + 1\n"
        "                queue.append(v)\n    return last, dist[last]\n\ndef main():\n    data = sys.stdin.buffer.read().split()\n"
        "    n = int(data[0])\n    adj = [[] for _ in range(n + 1)]\n    for i in range(n - 1):\n"
        "        u, v = int(data[1 + 2 * i]), int(data[2 + 2 * i])\n        adj[u].append(v)\n        adj[v].append(u)\n"
        "    end, _ = farthest(adj, 1, n)\n    _, diameter = farthest(adj, end, n)\n    print(diameter)\n\nmain()\n",
    ),
    (
        "Given n intervals [l_i, r_i], merge all overlapping intervals and print the merged "
        "intervals in increasing order (n <= 10^5, coordinates up to 10^9).",
        "import sys\n\ndef main():\n    data = sys.stdin.buffer.read().split()\n    n = int(data[0])\n"
        "    intervals = sorted((int(data[1 + 2 * i]), int(data[2 + 2 * i])) for i in range(n))\n    merged = []\n"
        "    for l, r in intervals:\n        if merged and l <= merged[-1][1]:\n            merged[-1][1] = max(merged[-1][1], r)\n"
        "        else:\n            merged.append([l, r])\n    print(len(merged))\n"
        "    print('\\n'.join(f'{l} {r}' for l, r in merged))\n\nmain()\n",
    ),
]

_NAMES = ["Alice", "Bob", "Chef", "Vasya", "Petya", "Monocarp", "Polycarp", "Nastya", "Kirill", "Timur"]
_THINGS = ["coins", "books", "candies", "stones", "tickets", "cards", "apples", "robots"]
_TEMPLATES = [
    "{name} has {n} {things} arranged in a row; the i-th has a value a_i. In one move {name} may "
    "take the leftmost or the rightmost one. {name} wants to take exactly {k} of them so that the "
    "sum of values is as large as possible. Input: n and k (1 <= k <= n <= {lim}), then n integers "
    "(|a_i| <= 10^9). Output the maximum sum.",
    "{name} is studying a directed graph with {n} vertices and m edges. A vertex is called {adj} if "
    "every other vertex can reach it. Count the {adj} vertices. Input: n and m (n, m <= {lim}), then "
    "m lines u v. Output one integer.",
    "You are given a string of length at most {lim} made of the first {k} lowercase letters. {name} "
    "calls a substring {adj} if no letter occurs in it more than twice. Find the number of {adj} "
    "substrings modulo 998244353.",
    "{name} owns {n} {things}, the i-th with weight w_i. They must be packed into boxes of capacity "
    "{k}, each box holding at most two {things}. Find the minimum number of boxes (n <= {lim}, "
    "w_i <= {k}).",
    "A sequence b is {adj} if b_i divides b_(i+1) for every i. Given n <= {lim} and k = {k}, count the "
    "{adj} sequences of length k whose elements are between 1 and n, modulo 10^9+7.",
    "{name} plays on a {n} x {n} board where some cells hold {things}. A rook starts in the top-left "
    "corner and may only move right or down. Find the maximum number of {things} it can collect on "
    "the way to the bottom-right corner, and print one optimal path as a string of 'R' and 'D'.",
    "There are {n} servers and q <= {lim} requests; request j arrives at time t_j and needs d_j units "
    "of work. Each request goes to the free server with the smallest index, or is dropped if all are "
    "busy. {name} wants the number of dropped requests and the busiest server's index.",
]
_ADJ = ["good", "nice", "beautiful", "balanced", "lucky", "perfect", "special"]


def _problem(rng: np.random.Generator) -> str:
    tpl = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    n, k = int(rng.integers(3, 9)), int(rng.integers(2, 7))
    text = tpl.format(
        name=_NAMES[int(rng.integers(len(_NAMES)))],
        things=_THINGS[int(rng.integers(len(_THINGS)))],
        adj=_ADJ[int(rng.integers(len(_ADJ)))],
        n=n,
        k=k,
        lim=["10^5", "2*10^5", "3*10^5", "10^6"][int(rng.integers(4))],
    )
    examples = []
    for e in range(int(rng.integers(1, 4))):
        values = " ".join(str(int(v)) for v in rng.integers(-50, 100, size=n))
        examples.append(f"Example {e + 1}\nInput:\n{n} {k}\n{values}\nOutput:\n{int(rng.integers(0, 500))}\n")
    return text + "\n\n" + "\n".join(examples)


def demonstration() -> str:
    parts = [INSTRUCTION]
    for i, (problem, solution) in enumerate(EXEMPLARS, 1):
        parts.append(f"### Problem {i}\n{problem}\n\n### Solution {i}\n```python\n{solution}```\n\n")
    return "".join(parts)


@register("programming")
def make_programming(
    *,
    num_requests: int | None,
    seed: int,
    data_dir: Path | None = None,
    tokenizer=None,
    min_tokens: int = 32,
    median_tokens: int = 160,
    max_tokens: int = 512,
) -> Workload:
    num_requests = 200 if num_requests is None else num_requests
    rng = np.random.default_rng(seed)
    prefix = demonstration()
    plen = count_tokens(prefix, tokenizer)
    n_ex = len(EXEMPLARS) + 1
    reqs = []
    for i in range(num_requests):
        prompt = prefix + f"### Problem {n_ex}\n{_problem(rng)}\n### Solution {n_ex}\n```python\n"
        reqs.append(
            WorkloadRequest(
                request_id=f"programming-{i}",
                arrival=0.0,
                prompt=prompt,
                prompt_token_ids=None,
                max_tokens=int(np.clip(rng.lognormal(np.log(median_tokens), 0.6), min_tokens, max_tokens)),
                shared_prefix_len=plen,
                group="demonstration",
            )
        )
    return Workload("programming", reqs, dict(min_tokens=min_tokens, median_tokens=median_tokens, max_tokens=max_tokens, prefix_len=plen))
