"""Request limits both HTTP servers (worker and router) apply: an API key and a body cap in
front of every endpoint (`Guard`), and bounded admission of work (`Admission`)."""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse

from .errors import error_response
from .openai import APIError


class Guard:
    """ASGI middleware in front of every endpoint: an optional API key (`Authorization: Bearer`,
    compared in constant time; `open_paths` need none) and a cap on request bodies, read from
    Content-Length before any of the body is (a chunked body, of unknown length, is refused)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int,
                 open_paths: frozenset[str] = frozenset({"/health"})) -> None:
        self.app, self.max_body_bytes, self.open_paths = app, max_body_bytes, open_paths
        self.expected = None if not api_key else f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def _refusal(self, scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in self.open_paths and \
                not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            return error_response(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                   "authentication_error")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is None and b"transfer-encoding" not in headers:
                return None  # neither header: an empty body (RFC 9112 6.3), e.g. POST /flush_cache
            if length is None:
                return error_response(411, "a request body needs a Content-Length", "invalid_request_error")
            if not length.isdigit() or int(length) > self.max_body_bytes:
                return error_response(413, f"request body over {self.max_body_bytes} bytes",
                                       "invalid_request_error")
        return None


def overloaded(what: str, retry_after_s: int) -> APIError:
    """The answer to a request beyond admission limits: 429 with a hint when to try again."""
    return APIError(429, f"overloaded: {what}; retry in {retry_after_s} s", "rate_limit_error",
                    headers={"Retry-After": str(retry_after_s)})


class Admission:
    """Bounded admission: at most `max_requests` requests and `max_tokens` prompt tokens in
    flight; beyond either, `enter` refuses with a 429 (memory stays bounded under overload)."""

    def __init__(self, max_requests: int, max_tokens: int, retry_after_s: int) -> None:
        self.max_requests, self.max_tokens, self.retry_after_s = max_requests, max_tokens, retry_after_s
        self.requests = self.tokens = 0

    def enter(self, tokens: int) -> None:
        if self.requests >= self.max_requests:
            raise overloaded(f"{self.requests} requests in flight", self.retry_after_s)
        if self.requests and self.tokens + tokens > self.max_tokens:
            raise overloaded(f"{self.tokens} prompt tokens in flight", self.retry_after_s)
        self.requests += 1
        self.tokens += tokens

    def leave(self, tokens: int) -> None:
        self.requests -= 1
        self.tokens -= tokens
