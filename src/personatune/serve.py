"""`personatune serve`: an OpenAI-compatible chat server that scores every reply in the background.

    personatune serve RUN_DIR|MODEL [--persona P.yaml] [--evaluator DIR] [--host 127.0.0.1] [--port 8000]

Endpoints:

- `POST /v1/chat/completions`: OpenAI chat-completions request (messages, max_tokens or
  max_completion_tokens, temperature, top_p, seed; n=1 and stream=false only). Errors use the OpenAI
  shape `{"error": {"message", "type", "param", "code"}}`.
- `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text format 0.0.4).

With `--api-key-env VAR` every endpoint but /health needs `Authorization: Bearer <the key in $VAR>`
(401 otherwise). A request naming another model than the one served gets 404; a seed outside int64
422; a lone surrogate in a message 400. Listening on anything but loopback prints a warning.
The `--log` file is created with mode 0600 (like the run directory's files) and must not be one of
the server's inputs.

What happens to one request, in order:
1. The body is read with a size cap (`max_body_bytes`, 413 past it), parsed as JSON (400 when it is
   not) and validated with pydantic (422 on a wrong type or a missing field; 400 for a feature this
   server does not implement, such as stream=true).
2. The request joins ONE bounded generation queue (503 with Retry-After when it is full). A single
   worker thread owns the model, so generation is serialised (a CPU model gains nothing from running
   two forward passes at once); it takes up to `batch_size` waiting requests with the same sampling
   parameters and decodes them as one left-padded batch.
3. The request waits at most `timeout_s` (queue time included) and gets 504 past it. A timed-out
   request that has not started is skipped; one already decoding finishes and its result is dropped
   (transformers `generate` cannot be interrupted mid-batch).
4. The reply is returned at once; the response is handed to a second worker thread that scores it
   with the persona evaluator (and appends the conversation to `log_path` for `personatune monitor`),
   so scoring never delays a reply. When that queue is full the response is not scored and
   `personatune_scoring_dropped_total` counts it.

The rolling persona metrics on /metrics are computed over the last `window` scored responses with the
METRICS.md definitions (consistency rate, per-trait adherence with no targeted traits, mean
style_match) plus the mean words per response beside a reference length (held-out chosen responses
of the run, else the middle of the persona's word range).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import queue
import re
import socket
import sys
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from personatune import limits as input_limits
from personatune.errors import ConfigError, RunDirError
from personatune.output_paths import check_output_file

log = logging.getLogger("personatune.serve")

LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the request latency histogram buckets."""
KNOWN_PATHS: tuple[str, ...] = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")
"""Paths reported by name on /metrics; any other path is counted as "other" (bounded label set)."""
UNSUPPORTED_FIELDS: tuple[str, ...] = ("stop", "tools", "tool_choice", "functions", "function_call", "logprobs",
                                       "top_logprobs", "response_format", "logit_bias")
"""OpenAI request fields this server does not implement: set to a non-null, non-false value they give 400
(silently ignoring them would return something other than what the client asked for)."""
DRAIN_LIMIT = 16 * 1024 * 1024
"""Bytes of an oversized body read and discarded before the 413 (so ordinary clients see the status, not a reset)."""
SCORE_BATCH = 32
"""Responses scored together by the scoring worker (one embedder batch)."""
SEED_RANGE = (-(2**63), 2**63 - 1)
"""Seeds a request may give (int64, as in the OpenAI API); others get 422."""
_SURROGATE = re.compile("[\ud800-\udfff]")


# ---- configuration ---------------------------------------------------------------------------------


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
        for name, lo in (("max_body_bytes", 1024), ("queue_size", 1), ("max_tokens", 1), ("batch_size", 1),
                         ("window", 1), ("score_queue_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                problems.append(f"{name}={v!r} must be an integer >= {lo}")
        if not isinstance(self.default_max_tokens, int) or not 1 <= self.default_max_tokens <= max(1, int(self.max_tokens)):
            problems.append(f"default_max_tokens={self.default_max_tokens!r} must be an integer in [1, max_tokens={self.max_tokens}]")
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            problems.append(f"timeout_s={self.timeout_s!r} must be a number > 0 (seconds)")
        if problems:
            raise ConfigError("invalid serve limits: " + "; ".join(problems))


# ---- request schema ----------------------------------------------------------------------------------


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

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


def _error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
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
        raise RequestError(422, f"{param or 'body'}: {first['msg']} ({e.error_count()} problem(s))", param=param) from None
    if req.stream:
        raise RequestError(400, "stream=true is not supported by this server; send stream=false", param="stream")
    if req.n != 1:
        raise RequestError(400, f"n={req.n} is not supported; this server returns one choice (n=1)", param="n")
    for name in UNSUPPORTED_FIELDS:
        v = (req.model_extra or {}).get(name)
        if v not in (None, False, [], {}):
            raise RequestError(400, f"{name} is not supported by this server; leave it out", param=name)
    if req.presence_penalty or req.frequency_penalty:
        raise RequestError(400, "presence_penalty/frequency_penalty are not supported; leave them at 0", param="presence_penalty")
    for i, m in enumerate(req.messages):
        hit = _SURROGATE.search(m.content)
        if hit:
            raise RequestError(400, f"messages[{i}].content holds a lone surrogate (U+{ord(hit.group()):04X} at character {hit.start()}), "
                                    "which is not text; send valid Unicode", param=f"messages.{i}.content")
    mt = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
    if mt > limits.max_tokens:
        raise RequestError(400, f"max_tokens={mt} exceeds this server's limit {limits.max_tokens}; ask for fewer", param="max_tokens")
    req.max_tokens = mt
    return req


# ---- generation worker ---------------------------------------------------------------------------


class TokenBackend(Protocol):
    """What the generation worker needs: `personatune.generation.hf.HFBackend` satisfies it."""

    tokenizer: Any

    def generate_ids(self, conversations: list[list[dict[str, str]]], *, max_new_tokens: int, temperature: float,
                     top_p: float = 1.0, n: int = 1, seed: int | None = None) -> list[list[list[int]]]: ...


class QueueFull(Exception):
    """The generation queue is full."""


class PromptTooLong(Exception):
    """Prompt tokens + max_tokens exceed the model's context."""


@dataclass
class GenJob:
    """One request waiting for generation; its result is (text, prompt_tokens, completion_tokens, finish_reason)."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple[Any, ...]:
        # Requests batch together only when they decode identically (seeded ones run alone, so a seed
        # reproduces the same reply whatever else was waiting).
        return (self.max_tokens, self.temperature, self.top_p, self.seed if self.seed is not None else ("unseeded",))


class GenerationWorker:
    """One thread that owns the model: a bounded queue in, futures out.

    Args:
        backend: the model backend (HFBackend).
        queue_size: waiting jobs at most.
        batch_size: jobs decoded together at most.
        context_limit: the model's context length in tokens (None: unchecked).
    """

    def __init__(self, backend: TokenBackend, queue_size: int, batch_size: int, context_limit: int | None) -> None:
        self.backend = backend
        self.batch_size = batch_size
        self.context_limit = context_limit
        self.queue: queue.Queue[GenJob] = queue.Queue(maxsize=queue_size)
        self.in_flight = 0
        self.tokens_total = 0
        self.seconds_total = 0.0
        self.requests_done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="personatune-generation", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, job: GenJob) -> Future:
        """Queue a job. Raises QueueFull when the queue is at capacity."""
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: the queue's expected drain time, at least 1."""
        per = self.seconds_total / self.requests_done if self.requests_done else 1.0
        return max(1, math.ceil(per * (self.queue.qsize() + self.in_flight)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            jobs = [first]
            while len(jobs) < self.batch_size:
                try:
                    jobs.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            # A job whose client already timed out (future cancelled) is skipped here.
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            groups: dict[tuple[Any, ...], list[GenJob]] = {}
            for j in jobs:
                groups.setdefault(j.key, []).append(j)
            for group in groups.values():
                self.in_flight = len(group)
                self._run(group)
                self.in_flight = 0

    def _run(self, group: list[GenJob]) -> None:
        from personatune.generation.hf import encode_chat

        tok = self.backend.tokenizer
        ok: list[tuple[GenJob, int]] = []
        for j in group:
            try:
                n_prompt = len(encode_chat(tok, j.messages))
            except Exception as e:  # noqa: BLE001 - a template error must fail this request only, not the worker
                j.future.set_exception(e)
                continue
            if self.context_limit is not None and n_prompt + j.max_tokens > self.context_limit:
                j.future.set_exception(PromptTooLong(
                    f"prompt has {n_prompt} tokens; with max_tokens={j.max_tokens} it exceeds the model context of "
                    f"{self.context_limit} tokens; shorten the conversation or lower max_tokens"))
                continue
            ok.append((j, n_prompt))
        if not ok:
            return
        j0 = ok[0][0]
        t0 = time.perf_counter()
        try:
            ids = self.backend.generate_ids([j.messages for j, _ in ok], max_new_tokens=j0.max_tokens,
                                            temperature=j0.temperature, top_p=j0.top_p, n=1, seed=j0.seed)
        except Exception as e:  # noqa: BLE001 - any model failure becomes a 500 for these requests; the worker lives on
            log.exception("generation failed for a batch of %d", len(ok))
            for j, _ in ok:
                j.future.set_exception(e)
            return
        dt = time.perf_counter() - t0
        for (j, n_prompt), per in zip(ok, ids):
            new = per[0]
            text = tok.decode(new, skip_special_tokens=True).strip()
            self.tokens_total += len(new)
            finish = "length" if len(new) >= j.max_tokens else "stop"
            j.future.set_result((text, n_prompt, len(new), finish))
        self.seconds_total += dt
        self.requests_done += len(ok)


# ---- scoring worker and metrics ------------------------------------------------------------------------


class ScorerLike(Protocol):
    """`personatune.scoring.scorer.Scorer` or anything with its `score` signature."""

    def score(self, texts: list[str], prompts: list[str | None] | None = None, contexts: list[str | None] | None = None,
              targets: list[list[str]] | None = None, ids: list[str] | None = None) -> list[Any]: ...


class ServeMetrics:
    """Counters, the latency histogram and the rolling persona window; rendered as Prometheus text.

    Args:
        window: scored responses kept in the rolling window.
        trait_ids: persona trait ids (empty: no persona metrics).
        reference_words: reference words per response for the style-drift gauge, or None.
    """

    def __init__(self, window: int, trait_ids: list[str] | None = None, reference_words: float | None = None) -> None:
        self.lock = threading.Lock()
        self.trait_ids = list(trait_ids or [])
        self.reference_words = reference_words
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: Counter[str] = Counter()
        self.rolling: deque[dict[str, Any]] = deque(maxlen=window)
        self.scored_total = 0
        self.scoring_dropped = 0
        self.scoring_errors = 0
        self.rejected: Counter[str] = Counter()

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        p = path if path in KNOWN_PATHS else "other"
        with self.lock:
            self.requests[(method, p, status)] += 1
            buckets = self.latency.setdefault(p, [0] * (len(LATENCY_BUCKETS) + 1))
            i = next((k for k, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
            buckets[i] += 1
            self.latency_sum[p] += seconds

    def observe_scores(self, records: list[Any]) -> None:
        from personatune.scoring.aggregate import adherence_pairs

        rows = []
        for r in records:
            rows.append({"consistent": bool(r.consistent), "consistency": float(r.consistency), "adherence": adherence_pairs(r),
                         "style_match": float(r.style_match), "words": float(r.style.get("words", math.nan))})
        with self.lock:
            self.rolling.extend(rows)
            self.scored_total += len(rows)

    def render(self, gauges: dict[str, float], info: dict[str, str]) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, v in samples:
                out.append(f"{name}{labels} {_num(v)}")

        with self.lock:
            metric("personatune_info", "gauge", "served model (value always 1)",
                   [("{" + ",".join(f'{k}="{_esc(v)}"' for k, v in info.items()) + "}", 1)])
            metric("personatune_requests_total", "counter", "HTTP requests by method, path and status code",
                   [(f'{{method="{m}",path="{p}",status="{s}"}}', c) for (m, p, s), c in sorted(self.requests.items())])
            out.append("# HELP personatune_request_latency_seconds request latency in seconds (arrival to response)")
            out.append("# TYPE personatune_request_latency_seconds histogram")
            for p, counts in sorted(self.latency.items()):
                cum = 0
                for b, c in zip(list(LATENCY_BUCKETS) + [math.inf], counts):
                    cum += c
                    out.append(f'personatune_request_latency_seconds_bucket{{path="{p}",le="{_num(b)}"}} {cum}')
                out.append(f'personatune_request_latency_seconds_sum{{path="{p}"}} {_num(self.latency_sum[p])}')
                out.append(f'personatune_request_latency_seconds_count{{path="{p}"}} {sum(counts)}')
            for name, (kind, help_) in GAUGE_HELP.items():
                if name in gauges:
                    metric(name, kind, help_, [("", gauges[name])])
            metric("personatune_scored_responses_total", "counter", "responses scored by the persona evaluator", [("", self.scored_total)])
            metric("personatune_scoring_dropped_total", "counter", "responses not scored because the scoring queue was full",
                   [("", self.scoring_dropped)])
            metric("personatune_scoring_errors_total", "counter", "responses whose scoring raised an error", [("", self.scoring_errors)])
            if self.trait_ids:
                self._render_rolling(metric)
        return "\n".join(out) + "\n"

    def _render_rolling(self, metric: Any) -> None:
        # Called with the lock held; `metric` appends to the exposition being built.
        rows = list(self.rolling)
        n = len(rows)
        nan = math.nan
        metric("personatune_rolling_window_responses", "gauge", "scored responses in the rolling window", [("", n)])
        metric("personatune_rolling_consistency_rate", "gauge", "share of consistent responses in the rolling window (METRICS.md)",
               [("", sum(r["consistent"] for r in rows) / n if n else nan)])
        metric("personatune_rolling_consistency_score_mean", "gauge", "mean continuous consistency score in the rolling window",
               [("", sum(r["consistency"] for r in rows) / n if n else nan)])
        per = []
        k_all = m_all = 0
        for t in self.trait_ids:
            flags = [r["adherence"][t] for r in rows if t in r["adherence"]]
            k_all += sum(flags)
            m_all += len(flags)
            per.append((f'{{trait="{_esc(t)}"}}', sum(flags) / len(flags) if flags else nan))
        metric("personatune_rolling_trait_adherence", "gauge",
               "share of rolling-window responses that adhere to the trait (no trait targeted: not violated)", per)
        metric("personatune_rolling_adherence_overall", "gauge", "share of adhering (response, trait) pairs in the rolling window",
               [("", k_all / m_all if m_all else nan)])
        metric("personatune_rolling_style_match_mean", "gauge", "mean style_match in the rolling window (0-1)",
               [("", sum(r["style_match"] for r in rows) / n if n else nan)])
        words = sum(r["words"] for r in rows) / n if n else nan
        metric("personatune_rolling_words_mean", "gauge", "mean words per response in the rolling window", [("", words)])
        ref = self.reference_words
        metric("personatune_reference_words", "gauge", "reference words per response (held-out chosen responses, else persona range middle)",
               [("", ref if ref is not None else nan)])
        metric("personatune_style_words_drift", "gauge", "(rolling mean words - reference) / reference; 0 = no drift",
               [("", (words - ref) / ref if (ref and n) else nan)])


GAUGE_HELP: dict[str, tuple[str, str]] = {
    "personatune_generation_queue_depth": ("gauge", "requests waiting for generation"),
    "personatune_generation_queue_capacity": ("gauge", "generation queue capacity (full: 503)"),
    "personatune_generation_in_flight": ("gauge", "requests being decoded right now"),
    "personatune_generated_tokens_total": ("counter", "completion tokens generated"),
    "personatune_generation_seconds_total": ("counter", "seconds spent in model generation"),
    "personatune_scoring_queue_depth": ("gauge", "responses waiting to be scored"),
}


def _num(v: float) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(v)
    return str(v)


def _esc(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class _ScoreItem:
    id: str
    messages: list[dict[str, str]]
    reply: str
    timestamp: float


class ScoringWorker:
    """One thread that scores served responses off the request path and appends them to the log.

    Args:
        scorer: the persona scorer, or None (log only).
        metrics: where scores go.
        queue_size: responses that may wait; beyond it a response is dropped and counted.
        log_path: JSONL conversation log, or None.
    """

    def __init__(self, scorer: ScorerLike | None, metrics: ServeMetrics, queue_size: int, log_path: str | None) -> None:
        self.scorer = scorer
        self.metrics = metrics
        self.log_path = Path(log_path) if log_path else None
        self.queue: queue.Queue[_ScoreItem] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="personatune-scoring", daemon=True)

    @property
    def active(self) -> bool:
        return self.scorer is not None or self.log_path is not None

    def start(self) -> None:
        if self.active:
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, item: _ScoreItem) -> None:
        if not self.active:
            return
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            with self.metrics.lock:
                self.metrics.scoring_dropped += 1

    def _loop(self) -> None:
        # Drain what is left on stop, so a graceful shutdown still logs every served reply.
        while not (self._stop.is_set() and self.queue.empty()):
            try:
                items = [self.queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(items) < SCORE_BATCH:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if self.log_path is not None:
                self._append_log(items)
            if self.scorer is not None:
                self._score(items)

    def _append_log(self, items: list[_ScoreItem]) -> None:
        # An append-only log (not an atomic rewrite): monitor skips a torn last line and reports it.
        lines = "".join(json.dumps({"timestamp": it.timestamp, "id": it.id,
                                    "messages": it.messages + [{"role": "assistant", "content": it.reply}]}) + "\n" for it in items)
        try:
            with open_log(self.log_path) as f:
                f.write(lines)
        except OSError:
            log.exception("could not append to %s", self.log_path)

    def _score(self, items: list[_ScoreItem]) -> None:
        prompts = [next((m["content"] for m in reversed(it.messages) if m["role"] == "user"), None) for it in items]
        try:
            records = self.scorer.score([it.reply for it in items], prompts=prompts, ids=[it.id for it in items])
        except Exception:  # noqa: BLE001 - a scorer bug must not stop the server; it is counted on /metrics
            log.exception("scoring failed for %d responses", len(items))
            with self.metrics.lock:
                self.metrics.scoring_errors += len(items)
            return
        self.metrics.observe_scores(records)


def open_log(path: Path) -> Any:
    """Open the conversation log for appending; a new file gets mode 0600 (it holds users' conversations)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


# ---- the app --------------------------------------------------------------------------------------------


def create_app(backend: TokenBackend, model_name: str, scorer: ScorerLike | None = None, trait_ids: list[str] | None = None,
               limits: ServeLimits | None = None, reference_words: float | None = None, context_limit: int | None = None,
               api_key: str | None = None) -> Any:
    """Build the FastAPI app (workers start and stop with the app's lifespan).

    Args:
        backend: the generation backend (HFBackend around the served model).
        model_name: the id reported by /v1/models and in every completion.
        scorer: the persona scorer; None serves without persona metrics.
        trait_ids: the persona's trait ids (for per-trait gauges); required with a scorer.
        limits: server limits (defaults: ServeLimits()).
        reference_words: reference words per response for the style-drift gauge.
        context_limit: the model's context length in tokens (None: read from backend.model.config).
        api_key: when given, every request but /health must send `Authorization: Bearer <api_key>` (else 401).

    Returns:
        A FastAPI application.
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServeLimits()
    if context_limit is None:
        cfg = getattr(getattr(backend, "model", None), "config", None)
        context_limit = getattr(cfg, "max_position_embeddings", None)
    metrics = ServeMetrics(limits.window, trait_ids if scorer is not None else [], reference_words)
    gen = GenerationWorker(backend, limits.queue_size, limits.batch_size, context_limit)
    scoring = ScoringWorker(scorer, metrics, limits.score_queue_size, limits.log_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        gen.start()
        scoring.start()
        try:
            yield
        finally:
            gen.stop()
            scoring.stop()

    app = FastAPI(title="personatune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics, app.state.gen, app.state.scoring, app.state.limits = metrics, gen, scoring, limits

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        status = 500
        try:
            if api_key is not None and request.url.path != "/health" and not _authorized(request, api_key):
                response = JSONResponse(_error_body(401, "missing or wrong API key; send the header 'Authorization: Bearer KEY' with the "
                                                         "key the server was started with (--api-key-env)"),
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
            else:
                response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.observe_request(request.method, request.url.path, status, time.perf_counter() - t0)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(_error_body(e.status, e.message, e.param), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(_error_body(422, str(e.errors()[:1])), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(_error_body(e.status_code, str(e.detail)), status_code=e.status_code)

    async def read_body(request: Request) -> bytes:
        cl = request.headers.get("content-length", "")
        too_big = cl.isdigit() and int(cl) > limits.max_body_bytes
        body = bytearray()
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if not too_big and seen <= limits.max_body_bytes:
                body += chunk
            else:
                too_big = True  # keep draining (and discarding) so the client gets the 413, not a reset ...
                if seen > DRAIN_LIMIT:
                    break  # ... up to a point: past it the connection is closed after the 413
        if too_big:
            raise RequestError(413, f"request body of {seen} bytes exceeds the limit of {limits.max_body_bytes} bytes; "
                                    f"send a shorter conversation")
        return bytes(body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        req = parse_request(await read_body(request), limits)
        if req.model not in (None, "", model_name):
            raise RequestError(404, f"model {input_limits.short_repr(req.model)} is not served here; this server serves '{model_name}' "
                                    f"(GET /v1/models); send model='{model_name}' or leave it out", param="model")
        messages = [{"role": m.role, "content": m.content} for m in req.messages]
        job = GenJob(messages, req.max_tokens, float(req.temperature), float(req.top_p), req.seed)
        try:
            fut = gen.submit(job)
        except QueueFull:
            wait = gen.retry_after_s()
            raise RequestError(503, f"the generation queue is full ({limits.queue_size} waiting); retry in {wait} s",
                               headers={"Retry-After": str(wait)}) from None
        try:
            text, n_prompt, n_new, finish = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"no reply within timeout_s={limits.timeout_s:g} s (queue wait included); retry later "
                                    f"or raise --timeout") from None
        except PromptTooLong as e:
            raise RequestError(400, str(e), param="messages") from None
        except Exception as e:  # noqa: BLE001 - the model failed for this request; report it and keep serving
            raise RequestError(500, f"generation failed: {type(e).__name__}: {e}") from None
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        scoring.submit(_ScoreItem(cid, messages, text, time.time()))
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new},
        })

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "personatune"}]})

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = gen.alive
        body = {"status": "ok" if ok else "generation worker stopped", "model": model_name, "queue_depth": gen.queue.qsize(),
                "queue_capacity": limits.queue_size, "scoring": scorer is not None}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        gauges = {"personatune_generation_queue_depth": gen.queue.qsize(), "personatune_generation_queue_capacity": limits.queue_size,
                  "personatune_generation_in_flight": gen.in_flight, "personatune_generated_tokens_total": gen.tokens_total,
                  "personatune_generation_seconds_total": gen.seconds_total,
                  "personatune_scoring_queue_depth": scoring.queue.qsize()}
        text = metrics.render(gauges, {"model": model_name, "scoring": "on" if scorer is not None else "off"})
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _authorized(request: Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


# ---- running it -----------------------------------------------------------------------------------------


class BackgroundServer:
    """Run an app with uvicorn in a thread on a socket bound here (port 0 = a free port); for tests and benchmarks.

    >>> with BackgroundServer(app) as url:   # doctest: +SKIP
    ...     httpx.get(url + "/health")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@dataclass
class ServeTarget:
    """What `personatune serve` resolved its target to."""

    model: str
    persona: str | None
    evaluator: str | None
    reference_sft: str | None


def resolve_target(target: str, persona: str | None = None, evaluator: str | None = None) -> ServeTarget:
    """Resolve RUN_DIR|MODEL to a model path, persona, evaluator and reference data.

    A folder with manifest.json is a run directory: the model is the output of 06_iterations when that
    stage finished, else of 05_optimization; the persona (02_persona), evaluator (04_evaluation) and
    held-out data (03_consistency_data) come from the manifest unless given. Anything else is a model
    name or path for `personatune.models.load_model_and_tokenizer`.

    Raises:
        RunDirError: a run directory without a finished trained model.
        ConfigError: --evaluator without a persona.
    """
    root = Path(target)
    ref = None
    if (root / "manifest.json").is_file():
        from personatune.rundir import RunDir

        rd = RunDir(root)
        model = None
        for stage in ("06_iterations", "05_optimization"):
            rec = rd.record(stage)
            if rec.status == "done" and "model" in rec.outputs:
                model = str(rd.output_path(stage, "model"))
                break
        if model is None:
            raise RunDirError(f"run directory {root} has no trained model (neither 06_iterations nor 05_optimization is done); "
                              f"fix: finish stage 5 (personatune run CONFIG) or pass a model path")
        if persona is None and rd.record("02_persona").status == "done":
            persona = str(rd.output_path("02_persona", "persona"))
        if evaluator is None and rd.record("04_evaluation").status == "done":
            evaluator = str(rd.output_path("04_evaluation", "evaluator"))
        if rd.record("03_consistency_data").status == "done":
            ref_path = rd.output_path("03_consistency_data", "heldout") / "sft.jsonl"
            ref = str(ref_path) if ref_path.is_file() else None
        target = model
    if evaluator is not None and persona is None:
        raise ConfigError(f"--evaluator {evaluator} needs --persona (the persona the evaluator was fitted for)")
    return ServeTarget(model=target, persona=persona, evaluator=evaluator, reference_sft=ref)


def load_scorer(persona: str, evaluator: str | None) -> tuple[Any, Any]:
    """(persona spec, Scorer): the fitted evaluator when given, else the persona's untrained scorer.

    Raises:
        PersonaSpecError: the persona file is invalid.
    """
    from personatune.persona import load_persona
    from personatune.scoring.factory import build_scorer

    spec = load_persona(persona)
    return spec, build_scorer(spec, evaluator_dir=evaluator)


def reference_words(spec: Any, reference_sft: str | None) -> float:
    """Mean words of the reference (held-out chosen) responses, else the middle of the persona's word range."""
    from personatune.scoring.style import count_words

    if reference_sft:
        vals = []
        with open(reference_sft, encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError, KeyError, IndexError, TypeError):
                    vals.append(count_words(json.loads(line)["messages"][-1]["content"]))
        if vals:
            return sum(vals) / len(vals)
    lo, hi = spec.style.words
    return (lo + hi) / 2


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: a free one), for uvicorn to serve on.

    Binding here rather than inside uvicorn turns a busy port into one clear error (uvicorn would sys.exit).

    Raises:
        ConfigError: the address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); fix: pick another --port or --host") from None
    return sock


def is_loopback(address: str) -> bool:
    """True when a bound address only takes connections from this machine."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def exposure_warning(bound: str, api_key: str | None) -> str | None:
    """The warning printed when the server listens beyond loopback (None on 127.0.0.1 / ::1)."""
    if is_loopback(bound):
        return None
    risk = ("requests need the API key, sent over plain HTTP: put a TLS proxy in front on untrusted networks" if api_key else
            "anyone who can reach this port can use the model; fix: --api-key-env VAR, or --host 127.0.0.1")
    return f"personatune serve: warning: listening on {bound}, reachable from other machines; {risk}"


def read_api_key(env_var: str | None) -> str | None:
    """The API key from environment variable `env_var` (None when no variable is named).

    Raises:
        ConfigError: the variable is named but unset or empty.
    """
    if env_var is None:
        return None
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise ConfigError(f"--api-key-env {env_var}: that environment variable is not set or empty; fix: export {env_var}=<a long random "
                          "key> before starting the server, or leave out --api-key-env")
    return key


def serve_main(target: str, host: str = "127.0.0.1", port: int = 8000, evaluator: str | None = None, persona: str | None = None,
               api_key_env: str | None = None, **limits: Any) -> int:
    """Entry point of `personatune serve`: load, then serve until Ctrl-C.

    Args:
        target: run directory or model name/path.
        host: interface to bind (127.0.0.1: this machine only).
        port: TCP port.
        evaluator: fitted evaluator folder (default: the run's stage-4 evaluator).
        persona: persona YAML (default: the run's stage-2 persona); without one, no persona metrics.
        api_key_env: environment variable holding the API key requests must send (None: no key).
        **limits: ServeLimits fields (max_body_bytes, queue_size, timeout_s, max_tokens, default_max_tokens,
            batch_size, window, score_queue_size, log_path), plus dtype and device for the model.

    Returns:
        0 after a clean shutdown.

    Raises:
        ConfigError: a bad limit, port or option combination.
        RunDirError, ModelNotFoundError, PersonaSpecError: the target, model or persona cannot be loaded.
    """
    import uvicorn

    from personatune.generation.hf import HFBackend
    from personatune.models import load_model_and_tokenizer

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port {port!r} must be an integer in [0, 65535]")
    dtype, device = limits.pop("dtype", None), limits.pop("device", None)
    unknown = sorted(set(limits) - set(ServeLimits.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown serve option(s) {unknown}; known: {sorted(ServeLimits.__dataclass_fields__)}")
    lim = ServeLimits(**{k: v for k, v in limits.items() if v is not None})
    api_key = read_api_key(api_key_env)
    t = resolve_target(target, persona, evaluator)
    if lim.log_path is not None:
        # Appending to an input (the persona, a model file) would corrupt it: refused before anything loads.
        check_output_file(lim.log_path, "--log", {"--persona": t.persona, "--evaluator": t.evaluator, "the model": t.model,
                                                   "the reference": t.reference_sft})
        open_log(Path(lim.log_path)).close()  # created now (mode 0600): a log that cannot be written fails here, not per reply
    if not Path(t.model).exists():
        from personatune.models import check_model_available

        check_model_available(t.model)  # a misspelt hub id fails in a second, not after download retries
    sock = bind_socket(host, port)  # before loading anything: a busy port fails in a second, not after the model load
    warning = exposure_warning(str(sock.getsockname()[0]), api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        scorer = spec = None
        if t.persona is not None:
            spec, scorer = load_scorer(t.persona, t.evaluator)
        model, tok = load_model_and_tokenizer(t.model, dtype=dtype, device=device)
        backend = HFBackend(model, tok, batch_size=lim.batch_size)
        name = Path(t.model).name if Path(t.model).exists() else t.model
        app = create_app(backend, name, scorer=scorer, trait_ids=spec.trait_ids if spec else None, limits=lim,
                         reference_words=reference_words(spec, t.reference_sft) if spec else None, api_key=api_key)
        scoring = f"scoring with {t.evaluator or 'the untrained persona scorer'}" if scorer else "no persona scoring (no --persona)"
        print(f"personatune serve: {t.model} on http://{host}:{sock.getsockname()[1]} ({scoring}); Ctrl-C stops", flush=True)
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=10)).run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # uvicorn re-raises the Ctrl-C it handled after its graceful shutdown; stopping is the normal end
    finally:
        sock.close()
    return 0

