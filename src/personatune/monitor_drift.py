"""The drift statistics of `personatune monitor`: one-sided drop tests of each window against the reference.

Steps 4 and 5 of personatune.monitor's docstring: `two_proportion_drop` and `mann_whitney_less` (the two tests),
`window_tests` (every test of one window), `detect_drift` (all windows, Bonferroni over windows x tests),
`find_contradictions` (multi-turn line-to-line consistency), `describe` (a window's figures), and the typed
`DriftReport` that monitor writes as JSON and renders as HTML (personatune.monitor_report).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

SNIPPET = 240
"""Characters of a response shown in an example."""


@dataclass
class Conversation:
    """One usable log line (monitor.read_conversations builds them; the statistics below read them)."""

    line: int
    messages: list[dict[str, str]]
    timestamp: Any = None

    @property
    def assistant_turns(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]


# ---- statistics ------------------------------------------------------------------------------------


def two_proportion_drop(k: int, n: int, k_ref: int, n_ref: int) -> tuple[float, float]:
    """One-sided two-proportion z-test of H1: the window's rate k/n is below the reference's k_ref/n_ref.

    Args:
        k, n: successes and trials in the window.
        k_ref, n_ref: successes and trials in the reference.

    Returns:
        (z, p): z = (k/n - k_ref/n_ref) / sqrt(p(1-p)(1/n + 1/n_ref)) with the pooled p; p = Phi(z).
        (nan, nan) when either sample is empty; (0, 1) when the pooled rate is 0 or 1 (no difference possible).
    """
    if n == 0 or n_ref == 0:
        return (math.nan, math.nan)
    pooled = (k + k_ref) / (n + n_ref)
    var = pooled * (1 - pooled) * (1 / n + 1 / n_ref)
    if var <= 0:
        return (0.0, 1.0)
    z = (k / n - k_ref / n_ref) / math.sqrt(var)
    return (z, NormalDist().cdf(z))


def mann_whitney_less(x: Any, y: Any) -> tuple[float, float]:
    """One-sided Mann-Whitney U test of H1: x tends to be smaller than y (`scipy.stats.mannwhitneyu`).

    Normal approximation with tie correction and a 0.5 continuity correction (adequate from about 10
    values per sample): `mannwhitneyu(x, y, alternative="less", method="asymptotic", use_continuity=True)`.

    Args:
        x: the window's values.
        y: the reference's values.

    Returns:
        (z, p) with p = Φ(z), z the standard-normal quantile of p (scipy returns U and p, not z; -inf or inf
        where p is 0 or 1 in floating point); (nan, nan) when a sample is empty; (0, 1) when every value is tied.

    >>> round(mann_whitney_less([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20])[1], 6)
    9.1e-05
    """
    from scipy import stats

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return (math.nan, math.nan)
    pooled = np.concatenate([a, b])
    if np.all(pooled == pooled[0]):
        return (0.0, 1.0)  # no variance: scipy would give p = 1 with z = -inf
    p = float(stats.mannwhitneyu(a, b, alternative="less", method="asymptotic", use_continuity=True).pvalue)
    return (float(stats.norm.ppf(p)), p)


# ---- drift -----------------------------------------------------------------------------------------


@dataclass
class TestResult:
    """One test of one window against the reference."""

    window: int
    test: str
    method: str
    reference: float
    value: float
    n: int
    n_reference: int
    z: float
    p: float
    alert: bool = False


@dataclass
class WindowSummary:
    """Descriptive figures of one window."""

    index: int
    first_line: int
    last_line: int
    conversations: int
    responses: int
    consistency_rate: float
    consistency_ci: tuple[float, float]
    consistency_mean: float
    style_match_mean: float
    words_mean: float
    adherence: dict[str, float]
    first_timestamp: Any = None
    last_timestamp: Any = None


@dataclass
class DriftReport:
    """Everything `monitor` found; `alert` is the exit decision."""

    alpha: float
    threshold: float
    n_tests: int
    reference_source: str
    reference: dict[str, Any]
    windows: list[WindowSummary]
    tests: list[TestResult]
    contradictions: list[dict[str, Any]] = field(default_factory=list)
    n_contradictions: int = 0
    conversations_multi_turn: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    bad_reference_lines: list[tuple[int, str]] = field(default_factory=list)
    conversations: int = 0
    responses: int = 0
    window_size: int = 0

    @property
    def alerts(self) -> list[TestResult]:
        return [t for t in self.tests if t.alert]

    @property
    def alert(self) -> bool:
        return bool(self.alerts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alert"] = self.alert
        d["n_bad_lines"] = len(self.bad_lines)
        return _jsonable(d)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    return x


def _adheres(r: Any) -> dict[str, bool]:
    # No targeted traits (logs have none): a trait adheres when it is not violated (METRICS.md).
    return {t: v < 0.5 for t, v in r.violations.items()}


def describe(records: list[Any], trait_ids: list[str]) -> dict[str, Any]:
    """Descriptive statistics of a set of scored responses (the reference or one window)."""
    from personatune.scoring.aggregate import wilson_ci

    n = len(records)
    k = sum(bool(r.consistent) for r in records)
    adh = [_adheres(r) for r in records]
    per = {}
    for t in trait_ids:
        flags = [a[t] for a in adh if t in a]
        per[t] = sum(flags) / len(flags) if flags else math.nan

    def mean(v: list[float]) -> float:
        return float(np.mean(v)) if len(v) else math.nan

    return {
        "responses": n,
        "consistency_rate": k / n if n else math.nan,
        "consistency_ci": wilson_ci(k, n),
        "consistency_mean": mean([r.consistency for r in records]),
        "style_match_mean": mean([r.style_match for r in records]),
        "words_mean": mean([r.style.get("words", math.nan) for r in records]),
        "adherence": per,
    }


def make_windows(n: int, window: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) windows of `window` items; a last window shorter than half joins the one before."""
    bounds = [(s, min(s + window, n)) for s in range(0, n, window)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < window / 2:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def window_tests(index: int, recs: list[Any], ref: list[Any], trait_ids: list[str]) -> list[TestResult]:
    """The one-sided drop tests of one window against the reference (p-values, no decision yet)."""
    out = []
    k, k0 = sum(bool(r.consistent) for r in recs), sum(bool(r.consistent) for r in ref)
    z, p = two_proportion_drop(k, len(recs), k0, len(ref))
    out.append(
        TestResult(
            index,
            "consistency_rate",
            "two-proportion z (one-sided)",
            k0 / len(ref),
            k / len(recs),
            len(recs),
            len(ref),
            z,
            p,
        )
    )
    for name, get in (("consistency_score", lambda r: r.consistency), ("style_match", lambda r: r.style_match)):
        x, y = [float(get(r)) for r in recs], [float(get(r)) for r in ref]
        z, p = mann_whitney_less(x, y)
        out.append(
            TestResult(
                index,
                name,
                "Mann-Whitney U (one-sided)",
                float(np.median(y)),
                float(np.median(x)),
                len(x),
                len(y),
                z,
                p,
            )
        )
    a, a0 = [_adheres(r) for r in recs], [_adheres(r) for r in ref]
    for t in trait_ids:
        f, f0 = [d[t] for d in a if t in d], [d[t] for d in a0 if t in d]
        z, p = two_proportion_drop(sum(f), len(f), sum(f0), len(f0))
        out.append(
            TestResult(
                index,
                f"adherence[{t}]",
                "two-proportion z (one-sided)",
                sum(f0) / len(f0) if f0 else math.nan,
                sum(f) / len(f) if f else math.nan,
                len(f),
                len(f0),
                z,
                p,
            )
        )
    return out


def find_contradictions(
    convs: list[Conversation], scored: list[list[tuple[int, Any]]], threshold: float = 0.5
) -> list[dict[str, Any]]:
    """Later assistant turns that violate a trait an earlier turn of the same conversation expressed.

    Args:
        convs: the conversations.
        scored: per conversation, (message index, ResponseScore) of its assistant turns (score_conversations).
        threshold: probability line for "expressed" and "violated".

    Returns:
        One dict per (conversation, trait): line, trait, earlier/later turn index and text snippets, scores.
    """
    found = []
    for c, turns in zip(convs, scored):
        if len(turns) < 2:
            continue
        expressed: dict[str, int] = {}  # trait -> first turn that expressed it
        reported: set[str] = set()  # each trait is reported once per conversation
        for i, r in turns:
            for t, v in r.violations.items():
                if t in expressed and t not in reported and v >= threshold:
                    j = expressed[t]
                    reported.add(t)
                    found.append(
                        {
                            "line": c.line,
                            "trait": t,
                            "earlier_turn": j,
                            "later_turn": i,
                            "earlier": c.messages[j]["content"][:SNIPPET],
                            "later": c.messages[i]["content"][:SNIPPET],
                            "violation": float(v),
                        }
                    )
            for t, e in r.traits.items():
                if t not in expressed and e >= threshold and r.violations.get(t, 0.0) < threshold:
                    expressed[t] = i
    return found


def detect_drift(
    reference: list[Any], windows: list[list[Any]], trait_ids: list[str], alpha: float
) -> tuple[list[TestResult], float, int]:
    """Test every window against the reference with a Bonferroni correction over windows x tests.

    Args:
        reference: scored reference responses (non-empty).
        windows: scored responses of each window.
        trait_ids: the persona's traits (one adherence test each).
        alpha: family-wise error rate (0 < alpha < 1).

    Returns:
        (tests with their `alert` set, per-test threshold alpha/m, m).
    """
    tests = [t for i, w in enumerate(windows) if w for t in window_tests(i, w, reference, trait_ids)]
    m = max(1, sum(math.isfinite(t.p) for t in tests))
    threshold = alpha / m
    for t in tests:
        t.alert = bool(math.isfinite(t.p) and t.p < threshold)
    return tests, threshold, m
