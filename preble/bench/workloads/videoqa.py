"""Video QA (NExT-QA): a video's frames as a shared token prefix, then a question and options.

Source: ``preble_sources/nextqa_{val,test}.csv``. A video contributes
``min(cap, frame_count // 30 * 256)`` pseudo video tokens, derived deterministically from the
video id (so equal videos share the exact prefix; ids in ``[low, vocab)`` avoiding special
tokens). Then the question and its five options as text tokens (the tokenizer's, else UTF-8
bytes). Requests take whole videos in a seeded order (all of a video's questions), then the
requests are shuffled; the output is ``max_tokens`` (default 8) tokens.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import Workload, WorkloadRequest, random_ids, register, stable_seed, text_to_ids, vocab_range

TOKENS_PER_SECOND = 256
FPS = 30


@lru_cache(maxsize=4)
def load_nextqa(data_dir: str) -> tuple[dict[str, int], dict[str, list[dict]]]:
    """(video -> frame_count, video -> its question rows) in file order."""
    frames: dict[str, int] = {}
    questions: dict[str, list[dict]] = {}
    for split in ("val", "test"):
        path = Path(data_dir) / "preble_sources" / f"nextqa_{split}.csv"
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                vid = row["video"]
                frames.setdefault(vid, int(row["frame_count"]))
                questions.setdefault(vid, []).append(row)
    return frames, questions


def video_tokens(video: str, frame_count: int, *, cap: int, low: int, high: int, excluded: set[int]) -> list[int]:
    n = min(cap, frame_count // FPS * TOKENS_PER_SECOND)
    rng = np.random.default_rng(stable_seed("nextqa-video", video))
    return random_ids(rng, n, low, high, excluded).tolist()


@register("videoqa")
def make_videoqa(
    *,
    num_requests: int | None,
    seed: int,
    data_dir: Path,
    tokenizer=None,
    max_tokens: int = 8,
    video_token_cap: int = 8192,
    vocab_size: int | None = None,
) -> Workload:
    frames, questions = load_nextqa(str(data_dir))
    videos = sorted(frames)
    num_requests = sum(len(v) for v in questions.values()) if num_requests is None else num_requests
    rng = np.random.default_rng(seed)
    low, high, excluded = vocab_range(tokenizer, vocab_size)
    picked: list[tuple[str, dict]] = []
    for k in rng.permutation(len(videos)):
        vid = videos[int(k)]
        picked.extend((vid, row) for row in questions[vid])
        if len(picked) >= num_requests:
            break
    picked = picked[:num_requests]
    order = rng.permutation(len(picked))
    cache: dict[str, list[int]] = {}
    reqs = []
    for i, k in enumerate(order):
        vid, row = picked[int(k)]
        if vid not in cache:
            cache[vid] = video_tokens(vid, frames[vid], cap=video_token_cap, low=low, high=high, excluded=excluded)
        vt = cache[vid]
        opts = "".join(f"({j}) {row[f'a{j}']}\n" for j in range(5))
        text = f"\nQuestion: {row['question']}?\nOptions:\n{opts}Answer with the option's number.\nAnswer:"
        reqs.append(
            WorkloadRequest(
                request_id=f"videoqa-{i}",
                arrival=0.0,
                prompt=None,
                prompt_token_ids=vt + text_to_ids(text, tokenizer),
                max_tokens=max_tokens,
                shared_prefix_len=len(vt),
                group=vid,
            )
        )
    params = dict(max_tokens=max_tokens, video_token_cap=video_token_cap, vocab=(low, high))
    return Workload("videoqa", reqs, params)
