"""Long-document QA (LooGLE): the document is the shared prefix, then one question.

Source: ``preble_sources/loogle_testdata_{shortdep,longdep}_qa.jsonl`` (10 documents, 123
question-answer pairs). Each request picks one question-answer pair uniformly (without
replacement while the pool lasts, then with it), so documents are shared by all their
questions. ``max_tokens`` is the reference answer's length, at most ``max_tokens_cap`` (45).
"""

from __future__ import annotations

import ast
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import Workload, WorkloadRequest, count_tokens, register

HEADER = "Please answer the question based on the long text below.\n\n"
FILES = ("loogle_testdata_shortdep_qa.jsonl", "loogle_testdata_longdep_qa.jsonl")


@lru_cache(maxsize=4)
def load_loogle(data_dir: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """(doc id -> text, [(doc id, question, answer), ...]) in file order."""
    docs: dict[str, str] = {}
    qas: list[tuple[str, str, str]] = []
    for fname in FILES:
        path = Path(data_dir) / "preble_sources" / fname
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            doc_id = rec["title"]
            if doc_id in docs and docs[doc_id] != rec["input"]:
                doc_id = f"{doc_id} ({fname.split('_')[2]})"
            docs[doc_id] = rec["input"]
            pairs = rec["qa_pairs"]
            if isinstance(pairs, str):
                pairs = ast.literal_eval(pairs)
            for p in pairs:
                qas.append((doc_id, str(p["Q"]), str(p["A"])))
    return docs, qas


@register("loogle")
def make_loogle(
    *,
    num_requests: int | None,
    seed: int,
    data_dir: Path,
    tokenizer=None,
    max_tokens_cap: int = 45,
) -> Workload:
    docs, qas = load_loogle(str(data_dir))
    num_requests = len(qas) if num_requests is None else num_requests
    rng = np.random.default_rng(seed)
    idx: list[int] = []
    while len(idx) < num_requests:
        idx.extend(rng.permutation(len(qas)).tolist())
    prefix_len: dict[str, int] = {}
    reqs = []
    for i, k in enumerate(idx[:num_requests]):
        doc_id, q, a = qas[k]
        prefix = HEADER + docs[doc_id].strip() + "\n\n"
        if doc_id not in prefix_len:
            prefix_len[doc_id] = count_tokens(prefix, tokenizer)
        ans = count_tokens(a, tokenizer) if tokenizer is not None else math.ceil(len(a) / 4)
        reqs.append(
            WorkloadRequest(
                request_id=f"loogle-{i}",
                arrival=0.0,
                prompt=prefix + f"Question: {q}\nAnswer:",
                prompt_token_ids=None,
                max_tokens=max(1, min(max_tokens_cap, ans)),
                shared_prefix_len=prefix_len[doc_id],
                group=doc_id,
            )
        )
    return Workload("loogle", reqs, dict(max_tokens_cap=max_tokens_cap, num_documents=len(docs)))
