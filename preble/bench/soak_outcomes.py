"""Each soak request's one outcome, decided from what its client saw, and their tally.

A request is completed (a full answer: every choice has a finish reason and, EOS being ignored,
as many tokens as were asked for), errored (an HTTP error status with a JSON error message, or a
stream's error event with a message), cancelled (its client disconnected on purpose), hung (no
outcome within the client's timeout) or lost (anything else: a connection dropped, a stream that
ended without [DONE] or an error, an answer cut short without saying why). Pure functions over
plain values, so each rule is tested on hand-built cases.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .soak_config import DocumentedError

DONE = "[DONE]"
SSE_DATA = "data: "


class Outcome(StrEnum):
    COMPLETED = "completed"
    ERRORED = "errored"
    CANCELLED = "cancelled"
    LOST = "lost"
    HUNG = "hung"


@dataclass(frozen=True)
class Verdict:
    """An outcome with why: `status` the HTTP status (None: no response), `error_code` the status
    an error names (the HTTP one, or the `code` of a stream's error event), `message` the
    server's error message, `detail` the client's reason for a lost or hung request."""

    outcome: Outcome
    status: int | None = None
    error_code: int | None = None
    message: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class RequestResult:
    """One request as the report keeps it: what was asked, when (seconds from the start), and its verdict."""

    index: int
    endpoint: str  # "chat" | "completions"
    stream: bool
    max_tokens: int
    sent_s: float
    ended_s: float
    verdict: Verdict


def parse_sse_line(line: str) -> dict | str | None:
    """A server-sent event line's payload: a dict, DONE, or None for other lines (blank,
    comments); a payload that is not JSON raises ValueError (the stream is broken)."""
    if not line.startswith(SSE_DATA):
        return None
    data = line[len(SSE_DATA):].strip()
    return DONE if data == DONE else json.loads(data)


def error_of(payload: Any) -> tuple[str, int | None] | None:
    """An OpenAI error body's (message, code), if it is one with a non-empty message."""
    err = payload.get("error") if isinstance(payload, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    if not isinstance(message, str) or not message:
        return None
    code = err.get("code")
    return message, code if isinstance(code, int) else None


def shortfall(reasons: dict[int, str | None], completion_tokens: int | None, max_tokens: int) -> str | None:
    """Why an answer is not full (None if it is): a choice without a finish reason, or fewer
    tokens than asked for (EOS is ignored, so a full answer has exactly `max_tokens`)."""
    if not reasons:
        return "no choices"
    missing = sorted(i for i, r in reasons.items() if not r)
    if missing:
        return f"choices {missing} have no finish reason"
    if completion_tokens is None:
        return "no usage"
    if completion_tokens != max_tokens:
        return f"{completion_tokens} of {max_tokens} tokens (finish reasons {sorted(set(reasons.values()))})"
    return None


def classify_whole(status: int, body: Any, max_tokens: int) -> Verdict:
    """A non-streamed answer (or a stream refused before it started): `body` is the parsed
    JSON, None if the body was not JSON."""
    if status == 200:
        choices = body.get("choices") if isinstance(body, dict) else None
        reasons = {c.get("index", i): c.get("finish_reason") for i, c in enumerate(choices or ())}
        usage = body.get("usage") if isinstance(body, dict) else None
        why = shortfall(reasons, (usage or {}).get("completion_tokens"), max_tokens)
        return Verdict(Outcome.COMPLETED, status) if why is None else Verdict(Outcome.LOST, status, detail=why)
    err = error_of(body)
    if err is None:
        return Verdict(Outcome.LOST, status, detail=f"status {status} without an error message")
    message, _ = err
    return Verdict(Outcome.ERRORED, status, status, message)


def classify_stream(payloads: Sequence[dict | str], max_tokens: int) -> Verdict:
    """A stream that began (200) and ended, given every payload it carried in order."""
    for payload in payloads:
        err = error_of(payload)
        if err is not None:
            message, code = err
            return Verdict(Outcome.ERRORED, 200, code, message)
    if not payloads or payloads[-1] != DONE:
        return Verdict(Outcome.LOST, 200, detail="the stream ended without [DONE] or an error")
    reasons: dict[int, str | None] = {}
    completion_tokens = None
    for payload in payloads[:-1]:
        if not isinstance(payload, dict):
            continue
        for c in payload.get("choices") or ():
            reasons[c["index"]] = c.get("finish_reason") or reasons.get(c["index"])
        if payload.get("usage"):
            completion_tokens = payload["usage"].get("completion_tokens")
    why = shortfall(reasons, completion_tokens, max_tokens)
    return Verdict(Outcome.COMPLETED, 200) if why is None else Verdict(Outcome.LOST, 200, detail=why)


def has_text(payload: dict | str) -> bool:
    """A chunk that carries answer text (a completion's `text` or a chat `delta.content`)."""
    if not isinstance(payload, dict):
        return False
    return any(c.get("text") or (c.get("delta") or {}).get("content") for c in payload.get("choices") or ())


def undocumented_5xx(verdict: Verdict, documented: Iterable[DocumentedError]) -> bool:
    """An error naming a 5xx that the router's documentation does not promise."""
    code = verdict.error_code
    if verdict.outcome is not Outcome.ERRORED or code is None or code < 500:
        return False
    return not any(d.status == code and (verdict.message or "").startswith(d.message) for d in documented)


@dataclass(frozen=True)
class Tally:
    """Outcomes counted; `sent` is counted apart, when each request leaves, so that a request
    the harness itself dropped shows as a difference."""

    sent: int
    outcomes: dict[str, int]
    undocumented_5xx: int
    statuses: dict[str, int]  # HTTP status (or "none") -> requests
    errors: dict[str, int]  # "code message" -> errored requests

    def count(self, outcome: Outcome) -> int:
        return self.outcomes.get(outcome, 0)

    @property
    def accounted(self) -> bool:
        """sent = completed + errored + cancelled: no request lost, hung or dropped by the harness."""
        ok = (Outcome.COMPLETED, Outcome.ERRORED, Outcome.CANCELLED)
        return self.sent == sum(self.count(o) for o in ok)


def tally(sent: int, results: Iterable[RequestResult], documented: Iterable[DocumentedError]) -> Tally:
    results, documented = list(results), tuple(documented)
    outcomes = Counter(r.verdict.outcome.value for r in results)
    statuses = Counter(str(r.verdict.status) if r.verdict.status is not None else "none" for r in results)
    errors = Counter(f"{r.verdict.error_code} {r.verdict.message}" for r in results
                     if r.verdict.outcome is Outcome.ERRORED)
    bad = sum(undocumented_5xx(r.verdict, documented) for r in results)
    return Tally(sent, {o.value: outcomes.get(o.value, 0) for o in Outcome}, bad, dict(statuses), dict(errors))
