"""The server's side of the OpenAI protocol: its limits, the accepted request subset, and the error shape.

`parse_request` turns a raw body into a checked `ChatCompletionRequest` or raises `RequestError`, which the
app turns into an OpenAI-style error response (`error_body`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from personatune import limits as input_limits
from personatune.errors import ConfigError

UNSUPPORTED_FIELDS: tuple[str, ...] = (
    "stop",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "response_format",
    "logit_bias",
)
"""OpenAI request fields this server does not implement: set to a non-null, non-false value they give 400
(silently ignoring them would return something other than what the client asked for)."""
SEED_RANGE = (-(2**63), 2**63 - 1)
"""Seeds a request may give (int64, as in the OpenAI API); others get 422."""
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class ServeLimits:
    """Limits and sizes of the server. Every field is a `personatune serve` option.

    Attributes:
        max_body_bytes: largest accepted request body, in bytes (>= 1024); larger gives 413.
        queue_size: generation requests that may wait at once (>= 1); one more gives 503 + Retry-After.
        timeout_s: seconds a request may wait for its reply, queue time included (> 0); past it, 504.
        max_tokens: largest max_tokens a request may ask for (>= 1); larger gives 400.
        default_max_tokens: max_tokens when the request gives none (1 .. max_tokens).
        batch_size: waiting requests decoded together in one batch (>= 1).
        window: scored responses in the rolling persona metrics (>= 1).
        score_queue_size: responses that may wait to be scored (>= 1); beyond it they are dropped (counted).
        log_path: JSONL file to append every served conversation to ({"timestamp", "id", "messages"}),
            the input format of `personatune monitor`; None: no log.
    """

    max_body_bytes: int = 64 * 1024
    queue_size: int = 64
    timeout_s: float = 120.0
    max_tokens: int = 512
    default_max_tokens: int = 128
    batch_size: int = 8
    window: int = 200
    score_queue_size: int = 1024
    log_path: str | None = None

    def __post_init__(self) -> None:
        problems = []
        for name, lo in (
            ("max_body_bytes", 1024),
            ("queue_size", 1),
            ("max_tokens", 1),
            ("batch_size", 1),
            ("window", 1),
            ("score_queue_size", 1),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                problems.append(f"{name}={v!r} must be an integer >= {lo}")
        if not isinstance(self.default_max_tokens, int) or not 1 <= self.default_max_tokens <= max(
            1, int(self.max_tokens)
        ):
            problems.append(
                f"default_max_tokens={self.default_max_tokens!r} must be an integer in [1, max_tokens={self.max_tokens}]"
            )
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            problems.append(f"timeout_s={self.timeout_s!r} must be a number > 0 (seconds)")
        if problems:
            raise ConfigError("invalid serve limits: " + "; ".join(problems))


class ChatMessageIn(BaseModel):
    """One message of a request. Only plain-text content is accepted (no content-part lists)."""

    model_config = ConfigDict(extra="ignore")  # e.g. "name" is accepted and ignored
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatCompletionRequest(BaseModel):
    """The accepted subset of an OpenAI chat-completions request. Types are strict ("0.5" is not a number)."""

    model_config = ConfigDict(extra="allow")  # clients send extra fields (user, ...); see UNSUPPORTED_FIELDS
    model: StrictStr | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat = Field(default=1.0, ge=0.0, le=2.0)
    top_p: StrictFloat = Field(default=1.0, gt=0.0, le=1.0)
    n: StrictInt = Field(default=1, ge=1)
    stream: StrictBool = False
    seed: StrictInt | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    presence_penalty: StrictFloat = 0.0
    frequency_penalty: StrictFloat = 0.0


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error response (never a crash)."""

    def __init__(
        self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape `{"error": {"message", "type", "param", "code"}}` for one refused request."""
    kind = "invalid_request_error" if status < 500 else ("overloaded_error" if status in (503, 504) else "server_error")
    # A message may quote the request (a lone surrogate cannot be encoded as UTF-8), and must stay short.
    message = input_limits.shorten(message.encode("utf-8", "backslashreplace").decode("utf-8"), 1000)
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def parse_request(body: bytes, limits: ServeLimits) -> ChatCompletionRequest:
    """Parse and check one chat-completions body.

    Args:
        body: the raw request body.
        limits: the server limits (max_tokens bound).

    Returns:
        The validated request.

    Raises:
        RequestError: 400 for malformed JSON or an unsupported feature, 422 for a wrong type or missing field.
    """
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON ({e}); send a JSON object") from None
    try:
        req = ChatCompletionRequest.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise RequestError(
            422, f"{param or 'body'}: {first['msg']} ({e.error_count()} problem(s))", param=param
        ) from None
    if req.stream:
        raise RequestError(400, "stream=true is not supported by this server; send stream=false", param="stream")
    if req.n != 1:
        raise RequestError(400, f"n={req.n} is not supported; this server returns one choice (n=1)", param="n")
    for name in UNSUPPORTED_FIELDS:
        v = (req.model_extra or {}).get(name)
        if v not in (None, False, [], {}):
            raise RequestError(400, f"{name} is not supported by this server; leave it out", param=name)
    if req.presence_penalty or req.frequency_penalty:
        raise RequestError(
            400, "presence_penalty/frequency_penalty are not supported; leave them at 0", param="presence_penalty"
        )
    for i, m in enumerate(req.messages):
        hit = _SURROGATE.search(m.content)
        if hit:
            raise RequestError(
                400,
                f"messages[{i}].content holds a lone surrogate (U+{ord(hit.group()):04X} at character {hit.start()}), "
                "which is not text; send valid Unicode",
                param=f"messages.{i}.content",
            )
    mt = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
    if mt > limits.max_tokens:
        raise RequestError(
            400, f"max_tokens={mt} exceeds this server's limit {limits.max_tokens}; ask for fewer", param="max_tokens"
        )
    req.max_tokens = mt
    return req
