"""Embodied agent (ReAct on ALFWorld): each turn re-sends the whole game history.

Source: ``preble_sources/react_alfworld.json`` (two few-shot episodes per task family) and
``react_alfworld_3prompts.json`` (three per family). An episode of family ``f`` has the shared
prefix = instruction + the two examples of ``f``; its game is a replay of one of ``f``'s three
example trajectories with the object instance numbers renamed per episode (a consistent,
seeded renaming), so the environment's observations are simulated deterministically. Turn ``t``
is one request whose prompt is prefix + task + the first ``t`` (action, observation) pairs +
``">"``; its ``max_tokens`` is the length of the action the agent took at that turn.

Requests of one episode (``group``) appear in turn order; episodes are interleaved at random
(seeded). A closed-loop load generator should send turn ``t+1`` only after turn ``t`` finished.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import Workload, WorkloadRequest, count_tokens, register

FAMILIES = ("put", "clean", "heat", "cool", "examine", "puttwo")
INSTRUCTION = "Interact with a household to solve a task. Here are two examples.\n"
_OBJ = re.compile(r"\b([a-z]+) (\d+)\b")


def parse_trajectory(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(task description, [(action, observation), ...]) of one few-shot episode."""
    lines = text.strip("\n").split("\n")
    first = next(i for i, ln in enumerate(lines) if ln.startswith("> "))
    task = "\n".join(lines[:first]) + "\n"
    steps: list[list] = []
    for ln in lines[first:]:
        if ln.startswith("> "):
            steps.append([ln[2:], []])
        else:
            steps[-1][1].append(ln)
    return task, [(a, "\n".join(obs)) for a, obs in steps]


@lru_cache(maxsize=4)
def load_prompts(data_dir: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    base = Path(data_dir) / "preble_sources"
    two = json.loads((base / "react_alfworld.json").read_text(encoding="utf-8"))
    three = json.loads((base / "react_alfworld_3prompts.json").read_text(encoding="utf-8"))
    prefixes, games = {}, {}
    for f in FAMILIES:
        prefixes[f] = INSTRUCTION + two[f"react_{f}_1"] + two[f"react_{f}_0"] + "\nHere is the task.\n"
        games[f] = [three[f"react_{f}_{k}"] for k in range(3) if f"react_{f}_{k}" in three]
    return prefixes, games


def _rename(text: str, offsets: dict[str, int]) -> str:
    return _OBJ.sub(lambda m: f"{m.group(1)} {int(m.group(2)) + offsets.get(m.group(1), 0)}", text)


def _episode(rng: np.random.Generator, game: str) -> tuple[str, list[tuple[str, str]]]:
    nouns = sorted({m.group(1) for m in _OBJ.finditer(game)})
    offsets = {n: int(rng.integers(0, 24)) for n in nouns}
    return parse_trajectory(_rename(game, offsets))


@register("agent")
def make_agent(
    *,
    num_requests: int | None,
    seed: int,
    data_dir: Path,
    tokenizer=None,
    max_tokens_cap: int = 64,
) -> Workload:
    num_requests = 200 if num_requests is None else num_requests
    prefixes, games = load_prompts(str(data_dir))
    rng = np.random.default_rng(seed)
    episodes: list[list[WorkloadRequest]] = []
    total = 0
    prefix_len = {f: count_tokens(prefixes[f], tokenizer) for f in FAMILIES}
    while total < num_requests:
        e = len(episodes)
        fam = FAMILIES[int(rng.integers(len(FAMILIES)))]
        game = games[fam][int(rng.integers(len(games[fam])))]
        task, steps = _episode(rng, game)
        history = prefixes[fam] + task
        turns = []
        for t, (action, obs) in enumerate(steps):
            if total + len(turns) >= num_requests:
                break
            if tokenizer is not None:
                out = count_tokens(" " + action, tokenizer) + 1
            else:
                out = math.ceil(len(action) / 4) + 1
            turns.append(
                WorkloadRequest(
                    request_id=f"agent-e{e}-t{t}",
                    arrival=0.0,
                    prompt=history + ">",
                    prompt_token_ids=None,
                    max_tokens=max(4, min(max_tokens_cap, out)),
                    shared_prefix_len=prefix_len[fam],
                    group=f"episode-{e}:{fam}",
                )
            )
            history += f"> {action}\n{obs}\n"
        episodes.append(turns)
        total += len(turns)
    # Random interleaving that keeps each episode's turns in order.
    order = np.concatenate([np.full(len(ep), k) for k, ep in enumerate(episodes)])
    rng.shuffle(order)
    cursors = [0] * len(episodes)
    reqs = []
    for k in order:
        reqs.append(episodes[k][cursors[k]])
        cursors[k] += 1
    return Workload("agent", reqs, dict(num_episodes=len(episodes), max_tokens_cap=max_tokens_cap))
