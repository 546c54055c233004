"""OpenAI-compatible request models and response shapes, shared by workers and the router."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.sampling_params import InvalidSamplingParams, SamplingParams

MAX_N = 16
MAX_STOP_SEQUENCES = 16


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = 0  # extension: 0 or -1 disables
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None  # extension
    seed: int | None = None
    ignore_eos: bool = False  # extension
    skip_special_tokens: bool = True  # extension
    presence_penalty: Annotated[float, Field(ge=0.0, le=0.0)] = 0.0  # accepted only at 0
    frequency_penalty: Annotated[float, Field(ge=0.0, le=0.0)] = 0.0
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
    user: str | None = None
    # SGLang-style fields that routers (sglang-router, vllm-router) add to every request they
    # forward; accepted at the values that change nothing here.
    no_stop_trim: Literal[False] = False
    return_hidden_states: Literal[False] = False

    @model_validator(mode="after")
    def _check_stop(self):
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return self

    def sampling(self, max_tokens: int, seed_offset: int = 0) -> SamplingParams:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        seed = None if self.seed is None else self.seed + seed_offset
        try:
            return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_k=max(self.top_k, 0),
                                  top_p=self.top_p, seed=seed, stop=stops,
                                  stop_token_ids=list(self.stop_token_ids or []), ignore_eos=self.ignore_eos,
                                  skip_special_tokens=self.skip_special_tokens)
        except InvalidSamplingParams as err:
            raise APIError(400, str(err)) from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    prompt: str | Annotated[list[int], Field(min_length=1)] | Annotated[list[str], Field(min_length=1, max_length=1)] \
        | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1, max_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    echo: Literal[False] = False
    logprobs: None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    suffix: None = None

    def prompt_value(self) -> str | list[int]:
        """The single prompt, as text or token ids (batched prompts are not supported)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            return p[0]
        return p


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = []
            for part in self.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
                parts.append(part["text"])
            return "".join(parts)
        return self.content or ""


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: Literal[False] | None = None
    # Added by the same routers; no-ops here (no reasoning parser: the answer is never split).
    continue_final_message: Literal[False] = False
    separate_reasoning: bool = True
    stream_reasoning: bool = True
    include_reasoning: bool = True

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class GenerateRequest(BaseModel):
    """SGLang's native `/generate` body (the subset routers and benchmarks use)."""

    model_config = ConfigDict(extra="allow")
    text: str | None = None
    input_ids: Annotated[list[int], Field(min_length=1)] | None = None
    sampling_params: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    rid: str | None = None

    @model_validator(mode="after")
    def _one_prompt(self):
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of `text` and `input_ids`")
        return self

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        sp = self.sampling_params
        known = {"max_new_tokens", "temperature", "top_p", "top_k", "stop", "stop_token_ids",
                 "ignore_eos", "skip_special_tokens", "seed", "sampling_seed", "n"}
        unknown = set(sp) - known
        if unknown:
            raise APIError(400, f"unsupported sampling_params {sorted(unknown)}", param="sampling_params")
        stop = sp.get("stop") or []
        try:
            return SamplingParams(
                max_tokens=int(sp.get("max_new_tokens", default_max_tokens)),
                temperature=float(sp.get("temperature", 1.0)), top_p=float(sp.get("top_p", 1.0)),
                top_k=max(int(sp.get("top_k", 0)), 0), seed=sp.get("seed", sp.get("sampling_seed")),
                stop=[stop] if isinstance(stop, str) else list(stop),
                stop_token_ids=list(sp.get("stop_token_ids") or []),
                ignore_eos=bool(sp.get("ignore_eos", False)),
                skip_special_tokens=bool(sp.get("skip_special_tokens", True)))
        except (TypeError, ValueError) as err:
            raise APIError(400, f"bad sampling_params: {err}", param="sampling_params") from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion_body(rid: str, model: str, choices: list[dict], use: dict, chat: bool) -> dict:
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices, "usage": use}


def choice(index: int, text: str, finish_reason: str | None, chat: bool) -> dict:
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chunk(rid: str, model: str, index: int, text: str | None, finish_reason: str | None, chat: bool,
          first: bool = False) -> dict:
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        c = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        c = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [c]}


def usage_chunk(rid: str, model: str, use: dict, chat: bool, timing: dict | None = None) -> dict:
    """The last chunk: token counts, and per-hop times when the request asked for them."""
    body = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [], "usage": use}
    if timing is not None:
        body["timing"] = timing
    return body


def sse(data: dict | str) -> bytes:
    """One server-sent event (msgspec's encoder: several times faster than json's, per token)."""
    if isinstance(data, str):
        return f"data: {data}\n\n".encode()
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


def finish_reason_openai(reason: str | None) -> str | None:
    """Engine reasons to OpenAI's: stop and length pass through, an abort reads as a stop."""
    return {"abort": "stop"}.get(reason, reason)
