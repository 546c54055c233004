"""Synthetic shared-prefix workload: ``groups`` system prompts, each followed by questions.

Token ids come from a seeded RNG: group ``g`` has a ``system_len``-token system prompt; each
request appends its own ``question_len`` random tokens and asks for ``output_len`` tokens.
With ``prompts_per_group`` given, every group gets exactly that many requests (and
``num_requests`` may be None); otherwise ``num_requests`` requests pick their group uniformly
(``popularity="uniform"``, round-robin counts) or by Zipf(``zipf_a``). Requests are shuffled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Workload, WorkloadRequest, random_ids, register, vocab_range, zipf_weights


@register("shared_prefix")
def make_shared_prefix(
    *,
    num_requests: int | None,
    seed: int,
    data_dir: Path | None = None,
    tokenizer=None,
    groups: int = 8,
    prompts_per_group: int | None = None,
    system_len: int = 2048,
    question_len: int = 128,
    output_len: int = 64,
    popularity: str = "uniform",
    zipf_a: float = 1.1,
    vocab_size: int | None = None,
) -> Workload:
    if popularity not in ("uniform", "zipf"):
        raise ValueError("popularity must be 'uniform' or 'zipf'")
    rng = np.random.default_rng(seed)
    low, high, excluded = vocab_range(tokenizer, vocab_size)
    if prompts_per_group is not None:
        if num_requests is not None and num_requests != groups * prompts_per_group:
            raise ValueError("num_requests must equal groups * prompts_per_group (or be None)")
        assign = np.repeat(np.arange(groups), prompts_per_group)
    else:
        if num_requests is None:
            raise ValueError("give num_requests or prompts_per_group")
        if popularity == "zipf":
            assign = rng.choice(groups, size=num_requests, p=zipf_weights(groups, zipf_a))
        else:
            assign = np.arange(num_requests) % groups
    rng.shuffle(assign)
    systems = [random_ids(rng, system_len, low, high, excluded).tolist() for _ in range(groups)]
    reqs = []
    for i, g in enumerate(assign):
        question = random_ids(rng, question_len, low, high, excluded).tolist()
        reqs.append(
            WorkloadRequest(
                request_id=f"shared_prefix-{i}",
                arrival=0.0,
                prompt=None,
                prompt_token_ids=systems[int(g)] + question,
                max_tokens=output_len,
                shared_prefix_len=system_len,
                group=f"group-{int(g)}",
            )
        )
    params = dict(
        groups=groups,
        prompts_per_group=prompts_per_group,
        system_len=system_len,
        question_len=question_len,
        output_len=output_len,
        popularity=popularity,
        zipf_a=zipf_a,
    )
    return Workload("shared_prefix", reqs, params)
