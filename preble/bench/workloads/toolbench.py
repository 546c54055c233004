"""Tool use (ToolBench): shared system prompt + one tool's documentation + the user query.

Source: ``preble_sources/stabletoolbench_solvable_queries/*.json`` (765 queries, each with its
``api_list``). A query's *tool* is the tool of the first API in its ``api_list``; the tool's
documentation is built from every API of that tool seen anywhere in the files. Requests pick a
tool by popularity (Zipf with ``zipf_a`` = 1.1 over a seeded ranking of the tools, or uniform),
then one of that tool's queries uniformly. ``max_tokens`` (32) is about one Thought/Action step.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import Workload, WorkloadRequest, count_tokens, register, zipf_weights

SYSTEM_PROMPT = (
    "You are AutoGPT, you can use many tools (functions) to do the following task.\n"
    "First I will give you the task description, and your task start.\n"
    "At each step, you need to give your thought to analyze the status now and what to do next, "
    "with a function call to actually execute your step. Your output should follow this format:\n"
    "Thought:\nAction:\nAction Input:\n\n"
    "After the call, you will get the call result, and you are now in a new state.\n"
    "Then you will analyze your status now, then decide what to do next...\n"
    "After many (Thought-call) pairs, you finally perform the task, then you can give your final "
    "answer.\n"
    "Remember:\n"
    "1. The state change is irreversible, you can't go back to one of the former states. If you "
    "want to restart the task, say \"I give up and restart\".\n"
    "2. All the thoughts are short, at most 5 sentences.\n"
    "3. You can do more than one try, so if your plan is to continuously try some conditions, "
    "you can do one of the conditions per try.\n"
    "Let's Begin!\n"
    "Task description: You should use functions to help handle the real time user queries. "
    "Remember:\n"
    "1. ALWAYS call \"Finish\" function at the end of the task. And the final answer should "
    "contain enough information to show to the user. If you can't handle the task, or you find "
    "that function calls always fail (the function is not valid now), use function "
    "Finish->give_up_and_restart.\n"
    "2. Do not use origin tool names, use only subfunctions' names.\n"
)


def _param_doc(p: dict) -> dict:
    return {k: p.get(k, "") for k in ("name", "type", "description", "default")}


def _api_doc(api: dict) -> str:
    doc = {
        "name": api.get("api_name", ""),
        "description": (api.get("api_description") or "")[:1024],
        "method": api.get("method", "GET"),
        "required_parameters": [_param_doc(p) for p in api.get("required_parameters") or []],
        "optional_parameters": [_param_doc(p) for p in api.get("optional_parameters") or []],
    }
    return json.dumps(doc, ensure_ascii=False)


@lru_cache(maxsize=4)
def load_tools(data_dir: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(tool -> documentation text, tool -> its queries), deterministic in file order."""
    folder = Path(data_dir) / "preble_sources" / "stabletoolbench_solvable_queries"
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no ToolBench queries under {folder}")
    apis: dict[str, dict[str, dict]] = {}
    category: dict[str, str] = {}
    queries: dict[str, list[str]] = {}
    for f in files:
        for q in json.loads(f.read_text(encoding="utf-8")):
            api_list = q.get("api_list") or []
            if not api_list:
                continue
            for api in api_list:
                tool = api["tool_name"]
                apis.setdefault(tool, {}).setdefault(api.get("api_name", ""), api)
                category.setdefault(tool, api.get("category_name", ""))
            queries.setdefault(api_list[0]["tool_name"], []).append(q["query"])
    docs = {}
    for tool in queries:
        lines = [f"Tool: {tool} (category: {category[tool]}). Its functions:"]
        lines += [_api_doc(apis[tool][name]) for name in sorted(apis[tool])]
        docs[tool] = "\n".join(lines) + "\n"
    return docs, queries


@register("toolbench")
def make_toolbench(
    *,
    num_requests: int | None,
    seed: int,
    data_dir: Path,
    tokenizer=None,
    popularity: str = "zipf",
    zipf_a: float = 1.1,
    max_tokens: int = 32,
) -> Workload:
    if popularity not in ("zipf", "uniform"):
        raise ValueError("popularity must be 'zipf' or 'uniform'")
    num_requests = 200 if num_requests is None else num_requests
    docs, queries = load_tools(str(data_dir))
    rng = np.random.default_rng(seed)
    tools = sorted(queries)
    ranking = [tools[i] for i in rng.permutation(len(tools))]
    weights = zipf_weights(len(tools), zipf_a) if popularity == "zipf" else np.full(len(tools), 1 / len(tools))
    picks = rng.choice(len(tools), size=num_requests, p=weights)
    reqs = []
    prefix_len: dict[str, int] = {}
    for i, t in enumerate(picks):
        tool = ranking[int(t)]
        qs = queries[tool]
        query = qs[int(rng.integers(len(qs)))]
        prefix = SYSTEM_PROMPT + "You have access to the following tools:\n" + docs[tool]
        prompt = prefix + "\nUser query: " + query + "\nBegin!\n"
        reqs.append(
            WorkloadRequest(
                request_id=f"toolbench-{i}",
                arrival=0.0,
                prompt=prompt,
                prompt_token_ids=None,
                max_tokens=max_tokens,
                shared_prefix_len=prefix_len.setdefault(tool, count_tokens(prefix, tokenizer)),
                group=tool,
            )
        )
    params = dict(popularity=popularity, zipf_a=zipf_a, max_tokens=max_tokens, num_tools=len(tools))
    return Workload("toolbench", reqs, params)
