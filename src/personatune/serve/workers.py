"""The server's two worker threads: generation (owns the model) and scoring (off the request path).

Generation is serialised in one thread (a CPU model gains nothing from two forward passes at once); it
takes up to `batch_size` waiting requests with the same sampling parameters and decodes them as one
left-padded batch. Scoring runs in a second thread, so a reply is never delayed by the persona evaluator;
it also appends each served conversation to the `--log` file that `personatune monitor` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from personatune.scoring.record import ScorerLike
from personatune.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

SCORE_BATCH = 32
"""Responses scored together by the scoring worker (one embedder batch)."""


# ---- generation ------------------------------------------------------------------------------------


class TokenBackend(Protocol):
    """What the generation worker needs: `personatune.generation.hf.HFBackend` satisfies it."""

    tokenizer: Any

    def generate_ids(
        self,
        conversations: list[list[dict[str, str]]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[list[int]]]: ...


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
        metrics: where generated tokens and model seconds are counted (None: nowhere).
    """

    def __init__(
        self,
        backend: TokenBackend,
        queue_size: int,
        batch_size: int,
        context_limit: int | None,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.backend = backend
        self.batch_size = batch_size
        self.context_limit = context_limit
        self.metrics = metrics
        self.queue: queue.Queue[GenJob] = queue.Queue(maxsize=queue_size)
        self.in_flight = 0
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
                j.future.set_exception(
                    PromptTooLong(
                        f"prompt has {n_prompt} tokens; with max_tokens={j.max_tokens} it exceeds the model context of "
                        f"{self.context_limit} tokens; shorten the conversation or lower max_tokens"
                    )
                )
                continue
            ok.append((j, n_prompt))
        if not ok:
            return
        j0 = ok[0][0]
        t0 = time.perf_counter()
        try:
            ids = self.backend.generate_ids(
                [j.messages for j, _ in ok],
                max_new_tokens=j0.max_tokens,
                temperature=j0.temperature,
                top_p=j0.top_p,
                n=1,
                seed=j0.seed,
            )
        except Exception as e:  # noqa: BLE001 - any model failure becomes a 500 for these requests; the worker lives on
            log.exception("generation failed for a batch of %d", len(ok))
            for j, _ in ok:
                j.future.set_exception(e)
            return
        dt = time.perf_counter() - t0
        tokens = 0
        for (j, n_prompt), per in zip(ok, ids):
            new = per[0]
            text = tok.decode(new, skip_special_tokens=True).strip()
            tokens += len(new)
            finish = "length" if len(new) >= j.max_tokens else "stop"
            j.future.set_result((text, n_prompt, len(new), finish))
        self.seconds_total += dt
        self.requests_done += len(ok)
        if self.metrics is not None:
            self.metrics.observe_generation(tokens, dt)


# ---- scoring ---------------------------------------------------------------------------------------


@dataclass
class ScoreItem:
    """One served reply waiting to be scored and logged."""

    id: str
    messages: list[dict[str, str]]
    reply: str
    timestamp: float


class ScoringWorker:
    """One thread that scores served responses off the request path and appends them to the log.

    Args:
        scorer: the persona scorer, or None (log only).
        metrics: where scores, drops and scoring errors go.
        queue_size: responses that may wait; beyond it a response is dropped and counted.
        log_path: JSONL conversation log, or None.
    """

    def __init__(self, scorer: ScorerLike | None, metrics: ServeMetrics, queue_size: int, log_path: str | None) -> None:
        self.scorer = scorer
        self.metrics = metrics
        self.log_path = Path(log_path) if log_path else None
        self.queue: queue.Queue[ScoreItem] = queue.Queue(maxsize=queue_size)
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

    def submit(self, item: ScoreItem) -> None:
        if not self.active:
            return
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.metrics.scoring_dropped.inc()

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

    def _append_log(self, items: list[ScoreItem]) -> None:
        # An append-only log (not an atomic rewrite): monitor skips a torn last line and reports it.
        lines = "".join(
            json.dumps(
                {
                    "timestamp": it.timestamp,
                    "id": it.id,
                    "messages": it.messages + [{"role": "assistant", "content": it.reply}],
                }
            )
            + "\n"
            for it in items
        )
        try:
            with open_log(self.log_path) as f:
                f.write(lines)
        except OSError:
            log.exception("could not append to %s", self.log_path)

    def _score(self, items: list[ScoreItem]) -> None:
        prompts = [next((m["content"] for m in reversed(it.messages) if m["role"] == "user"), None) for it in items]
        try:
            records = self.scorer.score([it.reply for it in items], prompts=prompts, ids=[it.id for it in items])
        except Exception:  # noqa: BLE001 - a scorer bug must not stop the server; it is counted on /metrics
            log.exception("scoring failed for %d responses", len(items))
            self.metrics.scoring_errors.inc(len(items))
            return
        self.metrics.observe_scores(records)


def open_log(path: Path) -> Any:
    """Open the conversation log for appending; a new file gets mode 0600 (it holds users' conversations)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")
