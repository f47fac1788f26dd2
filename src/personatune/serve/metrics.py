"""What `/metrics` exposes: request counters, the latency histogram, queue gauges and the rolling persona window.

Every `create_app` gets its own `ServeMetrics`, so its own prometheus_client `CollectorRegistry` (two apps in
one process, as in the tests, never share a count). Counters and the histogram are updated where things
happen; the queue gauges read the workers when /metrics is scraped; the rolling persona gauges are
recomputed each time a batch of replies is scored (METRICS.md definitions: consistency rate, per-trait
adherence with no targeted traits, mean style_match, mean words beside a reference length).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Media type of what `generate_latest` writes (Prometheus text format 0.0.4; the library's CONTENT_TYPE_LATEST
names version 1.0.0 in recent releases)."""
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the request latency histogram buckets."""
KNOWN_PATHS: tuple[str, ...] = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")
"""Paths reported by name on /metrics; any other path is counted as "other" (bounded label set)."""


class _Queue(Protocol):
    def qsize(self) -> int: ...


class QueuedWorker(Protocol):
    """What the queue gauges read from a worker (workers.ScoringWorker has this shape)."""

    queue: _Queue


class GeneratingWorker(QueuedWorker, Protocol):
    """What the generation gauges read (workers.GenerationWorker has this shape). A Protocol, not an import of
    workers.py: the workers import this module to report into it."""

    in_flight: int


class ServeMetrics:
    """The server's Prometheus metrics, in a registry of their own.

    Args:
        window: scored responses kept in the rolling window.
        trait_ids: persona trait ids (empty: no persona metrics).
        reference_words: reference words per response for the style-drift gauge, or None.
        info: labels of the `personatune_info` gauge (e.g. model, scoring).
    """

    def __init__(
        self,
        window: int,
        trait_ids: list[str] | None = None,
        reference_words: float | None = None,
        info: dict[str, str] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.lock = threading.Lock()  # guards the rolling window
        self.trait_ids = list(trait_ids or [])
        self.reference_words = reference_words
        self.rolling: deque[dict[str, Any]] = deque(maxlen=window)
        r = self.registry
        info = info or {}
        info_gauge = Gauge("personatune_info", "served model (value always 1)", list(info), registry=r)
        (info_gauge.labels(**info) if info else info_gauge).set(1)
        # Names below are the exposed ones: prometheus_client keeps a counter's `_total` suffix as given.
        self.requests = Counter(
            "personatune_requests_total",
            "HTTP requests by method, path and status code",
            ["method", "path", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "personatune_request_latency_seconds",
            "request latency in seconds (arrival to response)",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("personatune_generation_queue_depth", "requests waiting for generation", registry=r)
        self.queue_capacity = Gauge(
            "personatune_generation_queue_capacity", "generation queue capacity (full: 503)", registry=r
        )
        self.in_flight = Gauge("personatune_generation_in_flight", "requests being decoded right now", registry=r)
        self.generated_tokens = Counter("personatune_generated_tokens_total", "completion tokens generated", registry=r)
        self.generation_seconds = Counter(
            "personatune_generation_seconds_total", "seconds spent in model generation", registry=r
        )
        self.scoring_queue_depth = Gauge(
            "personatune_scoring_queue_depth", "responses waiting to be scored", registry=r
        )
        self.scored = Counter(
            "personatune_scored_responses_total", "responses scored by the persona evaluator", registry=r
        )
        self.scoring_dropped = Counter(
            "personatune_scoring_dropped_total", "responses not scored because the scoring queue was full", registry=r
        )
        self.scoring_errors = Counter(
            "personatune_scoring_errors_total", "responses whose scoring raised an error", registry=r
        )
        self._rolling: dict[str, Gauge] = {}
        if self.trait_ids:
            self._add_rolling_gauges()
            with self.lock:
                self._update_rolling()  # NaN until the first reply is scored

    def _add_rolling_gauges(self) -> None:
        helps = {
            "personatune_rolling_window_responses": "scored responses in the rolling window",
            "personatune_rolling_consistency_rate": "share of consistent responses in the rolling window (METRICS.md)",
            "personatune_rolling_consistency_score_mean": "mean continuous consistency score in the rolling window",
            "personatune_rolling_trait_adherence": "share of rolling-window responses that adhere to the trait (no trait targeted: not violated)",
            "personatune_rolling_adherence_overall": "share of adhering (response, trait) pairs in the rolling window",
            "personatune_rolling_style_match_mean": "mean style_match in the rolling window (0-1)",
            "personatune_rolling_words_mean": "mean words per response in the rolling window",
            "personatune_reference_words": "reference words per response (held-out chosen responses, else persona range middle)",
            "personatune_style_words_drift": "(rolling mean words - reference) / reference; 0 = no drift",
        }
        for name, help_ in helps.items():
            labels = ["trait"] if name == "personatune_rolling_trait_adherence" else []
            self._rolling[name.removeprefix("personatune_")] = Gauge(name, help_, labels, registry=self.registry)

    def watch(self, gen: GeneratingWorker, scoring: QueuedWorker, capacity: int) -> None:
        """Read the queue gauges from the workers at every scrape."""
        self.queue_depth.set_function(gen.queue.qsize)
        self.queue_capacity.set(capacity)
        self.in_flight.set_function(lambda: gen.in_flight)
        self.scoring_queue_depth.set_function(scoring.queue.qsize)

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency; an unknown path is counted as "other"."""
        p = path if path in KNOWN_PATHS else "other"
        self.requests.labels(method=method, path=p, status=str(status)).inc()
        self.latency.labels(path=p).observe(seconds)

    def observe_generation(self, tokens: int, seconds: float) -> None:
        """Count the completion tokens and model seconds of one decoded batch."""
        self.generated_tokens.inc(tokens)
        self.generation_seconds.inc(seconds)

    def observe_scores(self, records: list[Any]) -> None:
        """Add scored responses (`ResponseScore`s) to the rolling window and count them."""
        from personatune.scoring.aggregate import adherence_pairs

        rows = [
            {
                "consistent": bool(r.consistent),
                "consistency": float(r.consistency),
                "adherence": adherence_pairs(r),
                "style_match": float(r.style_match),
                "words": float(r.style.get("words", math.nan)),
            }
            for r in records
        ]
        with self.lock:
            self.rolling.extend(rows)
            if self.trait_ids:
                self._update_rolling()
        # Counted after the gauges are set: a scrape that sees the count also sees these replies in the window.
        self.scored.inc(len(rows))

    def _update_rolling(self) -> None:
        # Called with the lock held.
        rows = list(self.rolling)
        n = len(rows)
        nan = math.nan
        g = self._rolling
        g["rolling_window_responses"].set(n)
        g["rolling_consistency_rate"].set(sum(r["consistent"] for r in rows) / n if n else nan)
        g["rolling_consistency_score_mean"].set(sum(r["consistency"] for r in rows) / n if n else nan)
        k_all = m_all = 0
        for t in self.trait_ids:
            flags = [r["adherence"][t] for r in rows if t in r["adherence"]]
            k_all += sum(flags)
            m_all += len(flags)
            g["rolling_trait_adherence"].labels(trait=t).set(sum(flags) / len(flags) if flags else nan)
        g["rolling_adherence_overall"].set(k_all / m_all if m_all else nan)
        g["rolling_style_match_mean"].set(sum(r["style_match"] for r in rows) / n if n else nan)
        words = sum(r["words"] for r in rows) / n if n else nan
        g["rolling_words_mean"].set(words)
        ref = self.reference_words
        g["reference_words"].set(ref if ref is not None else nan)
        g["style_words_drift"].set((words - ref) / ref if (ref and n) else nan)

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4, media type `CONTENT_TYPE`)."""
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated:
    """The registry without the `<name>_created` series prometheus_client adds to counters and histograms.

    /metrics never exposed them and no dashboard needs them; `prometheus_client.disable_created_metrics()`
    would do the same, but for every registry in the process, not only this app's.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
