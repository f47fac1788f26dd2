"""`personatune monitor`: has a deployed persona drifted? Tested on conversation logs.

    personatune monitor --persona P.yaml|RUN_DIR [--evaluator DIR] LOGS.jsonl [--reference SFT.jsonl]
                        [--window 200] [--out drift.html] [--alpha 0.01]

What it does, in order:
1. Read the logs: one conversation per line, `{"messages": [...]}` (optional "timestamp", "id") or a
   bare message list - the format `personatune serve --log` writes. A line that is not JSON, has no
   valid message list or no assistant turn is reported by line number and skipped; only a file with no
   usable line at all is an error (exit 2).
2. Score every assistant turn with the persona evaluator, its prompt being the nearest earlier user
   turn. The reference (by default the run's held-out chosen responses, 03_consistency_data/heldout/
   sft.jsonl) is scored exactly the same way: prompt only, no targeted traits, no context label, so
   logs and reference are compared like with like (production logs carry neither).
   Without a reference the first window is the reference and testing starts at window 2.
3. Cut the conversations into consecutive windows of `window` conversations, in file order (a last
   window shorter than half a window joins the one before it).
4. Test each window against the reference, one-sided (only a DROP is an alert):
   - consistency rate: two-proportion z-test (pooled variance);
   - consistency score distribution: Mann-Whitney U (scipy; normal approximation, tie- and continuity-corrected);
   - style_match distribution: Mann-Whitney U, same;
   - adherence of each trait: two-proportion z-test.
   A test alerts when p < alpha / m, m = (windows tested) x (tests per window): a Bonferroni
   correction, so with no drift the chance of any alert is at most `alpha`.
5. Multi-turn line-to-line consistency: inside one conversation, a later assistant turn contradicts an
   earlier one when the earlier turn expressed trait t (traits[t] >= 0.5, violations[t] < 0.5) and the
   later one violates it (violations[t] >= 0.5). Counted and shown with examples; informational, not an
   alert (the single-turn reference has no multi-turn rate to test against).
6. Write a self-contained HTML report (inline CSS and SVG, nothing fetched) and a JSON summary next
   to it; return 1 when any test alerts, 0 otherwise.

Responses of one conversation are treated as independent draws; multi-turn logs with strongly
correlated turns make the tests somewhat liberal (docs/evaluation-monitoring.md).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

from personatune import limits
from personatune.errors import ConfigError, DataError
from personatune.output_paths import check_output_file
from personatune.rundir import atomic_write_json, atomic_write_text, jsonl_lines

ROLES = ("system", "user", "assistant")
MAX_EXAMPLES = 10
"""Contradiction examples shown in the report."""
MAX_BAD_SHOWN = 50
"""Unreadable lines listed in the report (all are counted)."""
SNIPPET = 240
"""Characters of a response shown in an example."""


class ScorerLike(Protocol):
    """`personatune.scoring.scorer.Scorer` or anything with its `score` signature."""

    def score(self, texts: list[str], prompts: list[str | None] | None = None, contexts: list[str | None] | None = None,
              targets: list[list[str]] | None = None, ids: list[str] | None = None) -> list[Any]: ...


# ---- reading -----------------------------------------------------------------------------------------


@dataclass
class Conversation:
    """One usable log line."""

    line: int
    messages: list[dict[str, str]]
    timestamp: Any = None

    @property
    def assistant_turns(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]


def _check_messages(msgs: Any) -> str | None:
    """Why a message list is unusable, or None when it is fine."""
    if not isinstance(msgs, list) or not msgs:
        return "no non-empty 'messages' list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role={m.get('role')!r} is not one of {list(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content is not a string"
        unusable = limits.text_problem(m["content"], f"messages[{i}].content")
        if unusable:
            return unusable
    if not any(m["role"] == "assistant" for m in msgs):
        return "no assistant turn"
    return None


def read_conversations(path: str | Path) -> tuple[list[Conversation], list[tuple[int, str]]]:
    """Read a JSONL conversation log.

    Args:
        path: JSONL, one conversation per line: {"messages": [...], "timestamp"?: ...} or a bare list.

    Returns:
        (conversations, bad) where bad lists (line number, reason) for every skipped line; blank lines are ignored.

    Raises:
        DataError: the file cannot be read, or no line is usable.
    """
    path = Path(path)
    try:
        # Split on "\n" only: splitlines() would also cut a record at a U+2028 inside one of its strings.
        raw = jsonl_lines(path.read_bytes().decode("utf-8", errors="replace"))
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}); fix: pass an existing JSONL file") from None
    convs: list[Conversation] = []
    bad: list[tuple[int, str]] = []
    for no, text in enumerate(raw, start=1):
        if not text.strip():
            continue
        if len(text) > limits.JSONL_MAX_LINE_CHARS:
            bad.append((no, f"{len(text):,} characters, more than the line limit of {limits.JSONL_MAX_LINE_CHARS:,} (personatune.limits.JSONL_MAX_LINE_CHARS)"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            bad.append((no, f"not JSON ({e.msg} at column {e.colno})"))
            continue
        except RecursionError:
            bad.append((no, "not JSON (nested too deeply)"))
            continue
        ts = None
        if isinstance(obj, dict):
            ts = obj.get("timestamp")
            obj = obj.get("messages")
        why = _check_messages(obj)
        if why:
            bad.append((no, why))
            continue
        convs.append(Conversation(no, [{"role": m["role"], "content": m["content"]} for m in obj], ts))
    if not convs:
        shown = "; ".join(f"line {n}: {w}" for n, w in bad[:3]) or "the file is empty"
        raise DataError(f"{path} has no usable conversation ({len(bad)} bad line(s): {shown}); fix: one JSON object per "
                        f"line with a 'messages' list of {{role, content}} that contains an assistant turn")
    return convs, bad


def score_conversations(scorer: ScorerLike, convs: list[Conversation]) -> list[list[tuple[int, Any]]]:
    """Score every assistant turn; its prompt is the nearest earlier user turn.

    Args:
        scorer: the persona scorer.
        convs: the conversations.

    Returns:
        Per conversation, a list of (message index, ResponseScore) in turn order.
    """
    texts, prompts, ids, where = [], [], [], []
    for ci, c in enumerate(convs):
        last_user = None
        for i, m in enumerate(c.messages):
            if m["role"] == "user":
                last_user = m["content"]
            elif m["role"] == "assistant":
                texts.append(m["content"])
                prompts.append(last_user)
                ids.append(f"line{c.line}:turn{i}")
                where.append((ci, i))
    records = scorer.score(texts, prompts=prompts, ids=ids) if texts else []
    out: list[list[tuple[int, Any]]] = [[] for _ in convs]
    for (ci, i), r in zip(where, records):
        out[ci].append((i, r))
    return out


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
    mean = (lambda v: float(np.mean(v)) if len(v) else math.nan)
    return {"responses": n, "consistency_rate": k / n if n else math.nan, "consistency_ci": wilson_ci(k, n),
            "consistency_mean": mean([r.consistency for r in records]), "style_match_mean": mean([r.style_match for r in records]),
            "words_mean": mean([r.style.get("words", math.nan) for r in records]), "adherence": per}


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
    out.append(TestResult(index, "consistency_rate", "two-proportion z (one-sided)", k0 / len(ref), k / len(recs),
                          len(recs), len(ref), z, p))
    for name, get in (("consistency_score", lambda r: r.consistency), ("style_match", lambda r: r.style_match)):
        x, y = [float(get(r)) for r in recs], [float(get(r)) for r in ref]
        z, p = mann_whitney_less(x, y)
        out.append(TestResult(index, name, "Mann-Whitney U (one-sided)", float(np.median(y)), float(np.median(x)),
                              len(x), len(y), z, p))
    a, a0 = [_adheres(r) for r in recs], [_adheres(r) for r in ref]
    for t in trait_ids:
        f, f0 = [d[t] for d in a if t in d], [d[t] for d in a0 if t in d]
        z, p = two_proportion_drop(sum(f), len(f), sum(f0), len(f0))
        out.append(TestResult(index, f"adherence[{t}]", "two-proportion z (one-sided)",
                              sum(f0) / len(f0) if f0 else math.nan, sum(f) / len(f) if f else math.nan, len(f), len(f0), z, p))
    return out


def find_contradictions(convs: list[Conversation], scored: list[list[tuple[int, Any]]], threshold: float = 0.5) -> list[dict[str, Any]]:
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
                    found.append({"line": c.line, "trait": t, "earlier_turn": j, "later_turn": i,
                                  "earlier": c.messages[j]["content"][:SNIPPET], "later": c.messages[i]["content"][:SNIPPET],
                                  "violation": float(v)})
            for t, e in r.traits.items():
                if t not in expressed and e >= threshold and r.violations.get(t, 0.0) < threshold:
                    expressed[t] = i
    return found


def detect_drift(reference: list[Any], windows: list[list[Any]], trait_ids: list[str], alpha: float) -> tuple[list[TestResult], float, int]:
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


def _check_options(window: Any, alpha: Any) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"--window {window!r} must be an integer >= 1 (conversations per window)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"--alpha {alpha!r} must be a number in (0, 1), e.g. 0.01")


def run_monitor(scorer: ScorerLike, trait_ids: list[str], logs: str | Path, reference: str | Path | None,
                window: int = 200, alpha: float = 0.01) -> DriftReport:
    """Read, score, window and test (steps 1-5 of the module docstring).

    Args:
        scorer: the persona scorer.
        trait_ids: the persona's traits.
        logs: the conversation log (JSONL).
        reference: reference JSONL (same format; held-out sft.jsonl rows qualify), or None to use the first window.
        window: conversations per window (>= 1).
        alpha: family-wise false-alarm rate (0 < alpha < 1).

    Returns:
        The DriftReport.

    Raises:
        ConfigError: bad window or alpha.
        DataError: unreadable or empty logs or reference.
    """
    _check_options(window, alpha)
    convs, bad = read_conversations(logs)
    scored = score_conversations(scorer, convs)
    bounds = make_windows(len(convs), window)
    win_recs = [[r for c in scored[a:b] for _, r in c] for a, b in bounds]
    bad_ref: list[tuple[int, str]] = []
    if reference is not None:
        ref_convs, bad_ref = read_conversations(reference)
        ref = [r for c in score_conversations(scorer, ref_convs) for _, r in c]
        source = f"{reference} ({len(ref_convs)} conversations)"
        tested = list(range(len(bounds)))
    else:
        if len(bounds) < 2:
            raise DataError(f"{logs}: without --reference the first window is the reference, but the log has only "
                            f"{len(convs)} conversation(s) = 1 window of --window {window}; fix: pass --reference or a smaller --window")
        ref = win_recs[0]
        source = f"first window of the log (lines {convs[0].line}-{convs[bounds[0][1] - 1].line})"
        tested = list(range(1, len(bounds)))
    tests, threshold, m = detect_drift(ref, [win_recs[i] if i in tested else [] for i in range(len(bounds))], trait_ids, alpha)
    summaries = []
    for i, (a, b) in enumerate(bounds):
        d = describe(win_recs[i], trait_ids)
        summaries.append(WindowSummary(i, convs[a].line, convs[b - 1].line, b - a, d["responses"], d["consistency_rate"],
                                       d["consistency_ci"], d["consistency_mean"], d["style_match_mean"], d["words_mean"],
                                       d["adherence"], convs[a].timestamp, convs[b - 1].timestamp))
    contradictions = find_contradictions(convs, scored)
    return DriftReport(alpha=float(alpha), threshold=threshold, n_tests=m, reference_source=source, reference=describe(ref, trait_ids),
                       windows=summaries, tests=tests, contradictions=contradictions, n_contradictions=len(contradictions),
                       conversations_multi_turn=sum(len(c.assistant_turns) >= 2 for c in convs), bad_lines=bad,
                       bad_reference_lines=bad_ref, conversations=len(convs), responses=sum(len(w) for w in win_recs), window_size=window)


# ---- HTML report -----------------------------------------------------------------------------------


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.alert{background:#fde2e1;font-weight:600}.ok{color:#1a7f37}.bad{color:#c62828}.verdict{font-size:1.2em;padding:.6em 1em;border-radius:6px}
.v-alert{background:#fde2e1;border:1px solid #c62828}.v-ok{background:#e6f4ea;border:1px solid #1a7f37}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}.ex{margin:.6em 0;padding:.4em .8em;border-left:3px solid #c62828;background:#fafafa}"""


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if (x != 0 and abs(x) < 10 ** -digits) else f"{x:.{digits}f}"
    return html.escape(str(x))


def _line_chart(title: str, values: list[float], ref: float, cis: list[tuple[float, float]] | None, alerts: set[int]) -> str:
    """An inline SVG: one point per window (with interval bars), the reference as a dashed line, alerts in red."""
    w, h, pad = 760, 220, 40
    n = max(1, len(values))
    xs = [pad + (i + 0.5) * (w - 2 * pad) / n for i in range(len(values))]
    y = (lambda v: h - pad - (min(max(v, 0.0), 1.0)) * (h - 2 * pad))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>',
             f'<text x="{pad}" y="18" font-size="13">{html.escape(title)}</text>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>'
                     f'<text x="{pad - 6}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end">{tick:.2f}</text>')
    if math.isfinite(ref):
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y(ref):.1f}" y2="{y(ref):.1f}" stroke="#555" stroke-dasharray="5,4"/>'
                     f'<text x="{w - pad}" y="{y(ref) - 4:.1f}" font-size="10" text-anchor="end">reference {ref:.3f}</text>')
    pts = [(x, v) for x, v in zip(xs, values) if math.isfinite(v)]
    if len(pts) > 1:
        parts.append('<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="'
                     + " ".join(f"{x:.1f},{y(v):.1f}" for x, v in pts) + '"/>')
    for i, (x, v) in enumerate(zip(xs, values)):
        if not math.isfinite(v):
            continue
        color = "#c62828" if i in alerts else "#1565c0"
        if cis:
            lo, hi = cis[i]
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" stroke="{color}" opacity="0.6"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{y(v):.1f}" r="3.5" fill="{color}"><title>window {i}: {v:.3f}</title></circle>')
        if n <= 30:
            parts.append(f'<text x="{x:.1f}" y="{h - pad + 14}" font-size="10" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{w / 2:.0f}" y="{h - 6}" font-size="11" text-anchor="middle">window</text></svg>')
    return "".join(parts)


def render_html(rep: DriftReport, persona_name: str) -> str:
    """The self-contained HTML drift report."""
    e = html.escape
    alert_windows = {t.window for t in rep.alerts}
    cons_alerts = {t.window for t in rep.alerts if t.test in ("consistency_rate", "consistency_score")}
    style_alerts = {t.window for t in rep.alerts if t.test == "style_match"}
    verdict = (f'<p class="verdict v-alert">ALERT: {len(rep.alerts)} test(s) in {len(alert_windows)} window(s) show a significant drop '
               f'(family-wise alpha {rep.alpha:g}, per-test threshold {_f(rep.threshold)}).</p>' if rep.alert else
               f'<p class="verdict v-ok">No drift detected: no test below the per-test threshold {_f(rep.threshold)} '
               f'(family-wise alpha {rep.alpha:g}, {rep.n_tests} tests).</p>')
    ref = rep.reference
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>personatune drift report: {e(persona_name)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>Persona drift report: {e(persona_name)}</h1>", verdict,
           f"<p>{rep.conversations} conversations, {rep.responses} assistant responses, {len(rep.windows)} window(s) of "
           f"{rep.window_size} conversations; {len(rep.bad_lines)} unreadable line(s) skipped. Reference: {e(rep.reference_source)}, "
           f"{ref['responses']} responses, consistency rate {_f(ref['consistency_rate'])}.</p>",
           "<h2>Consistency rate per window</h2>",
           _line_chart("consistency rate (Wilson 95% interval)", [w.consistency_rate for w in rep.windows], ref["consistency_rate"],
                       [w.consistency_ci for w in rep.windows], cons_alerts),
           _line_chart("mean style_match", [w.style_match_mean for w in rep.windows], ref["style_match_mean"], None, style_alerts),
           "<h2>Windows</h2><table><tr><th>window</th><th class=l>log lines</th><th>conversations</th><th>responses</th>"
           "<th>consistency rate</th><th>95% interval</th><th>mean consistency</th><th>mean style_match</th><th>mean words</th><th>alerts</th></tr>",
           f"<tr><td class=l>reference</td><td class=l>-</td><td>-</td><td>{ref['responses']}</td><td>{_f(ref['consistency_rate'])}</td>"
           f"<td>{_f(ref['consistency_ci'][0])}-{_f(ref['consistency_ci'][1])}</td><td>{_f(ref['consistency_mean'])}</td>"
           f"<td>{_f(ref['style_match_mean'])}</td><td>{_f(ref['words_mean'], 1)}</td><td>-</td></tr>"]
    for w in rep.windows:
        k = sum(t.alert for t in rep.tests if t.window == w.index)
        out.append(f"<tr{' class=alert' if k else ''}><td>{w.index}</td><td class=l>{w.first_line}-{w.last_line}</td><td>{w.conversations}</td>"
                   f"<td>{w.responses}</td><td>{_f(w.consistency_rate)}</td><td>{_f(w.consistency_ci[0])}-{_f(w.consistency_ci[1])}</td>"
                   f"<td>{_f(w.consistency_mean)}</td><td>{_f(w.style_match_mean)}</td><td>{_f(w.words_mean, 1)}</td><td>{k}</td></tr>")
    out.append("</table>")
    traits = list(ref["adherence"])
    if traits:
        out.append("<h2>Trait adherence per window</h2><p>Share of responses that do not violate the trait (no trait is targeted in "
                   "logs). Red: significant drop.</p><table><tr><th class=l>trait</th><th>reference</th>"
                   + "".join(f"<th>w{w.index}</th>" for w in rep.windows) + "</tr>")
        flagged = {(t.window, t.test) for t in rep.alerts}
        for t in traits:
            cells = "".join(f"<td{' class=alert' if (w.index, f'adherence[{t}]') in flagged else ''}>{_f(w.adherence.get(t))}</td>"
                            for w in rep.windows)
            out.append(f"<tr><td class=l>{e(t)}</td><td>{_f(ref['adherence'][t])}</td>{cells}</tr>")
        out.append("</table>")
    out.append(f"<h2>Tests</h2><p>One-sided (H1: the window is worse than the reference). Bonferroni over {rep.n_tests} tests: "
               f"a test alerts when p &lt; {rep.alpha:g}/{rep.n_tests} = {_f(rep.threshold)}. Rates for z-tests, medians for Mann-Whitney.</p>"
               "<table><tr><th>window</th><th class=l>test</th><th class=l>method</th><th>reference</th><th>window</th><th>n</th>"
               "<th>z</th><th>p</th><th>alert</th></tr>")
    for t in sorted(rep.tests, key=lambda t: (not t.alert, t.window, t.test)):
        out.append(f"<tr{' class=alert' if t.alert else ''}><td>{t.window}</td><td class=l>{e(t.test)}</td><td class=l>{e(t.method)}</td>"
                   f"<td>{_f(t.reference)}</td><td>{_f(t.value)}</td><td>{t.n}</td><td>{_f(t.z, 2)}</td><td>{_f(t.p)}</td>"
                   f"<td>{'ALERT' if t.alert else ''}</td></tr>")
    out.append("</table>")
    out.append(f"<h2>Multi-turn contradictions</h2><p>{rep.n_contradictions} contradiction(s) in {rep.conversations_multi_turn} "
               "conversation(s) with two or more assistant turns: a later turn violates (violations[t] &ge; 0.5) a trait an earlier "
               "turn expressed (traits[t] &ge; 0.5, not violated).</p>")
    for c in rep.contradictions[:MAX_EXAMPLES]:
        out.append(f"<div class=ex>line {c['line']}, trait <b>{e(c['trait'])}</b>: turn {c['earlier_turn']} "
                   f"<q>{e(c['earlier'])}</q><br>later turn {c['later_turn']} (violation {c['violation']:.2f}) <q>{e(c['later'])}</q></div>")
    if rep.bad_lines or rep.bad_reference_lines:
        out.append(f"<h2>Unreadable lines</h2><p>{len(rep.bad_lines)} in the log, {len(rep.bad_reference_lines)} in the reference "
                   f"(first {MAX_BAD_SHOWN} shown).</p><ul>")
        for label, bl in (("log", rep.bad_lines), ("reference", rep.bad_reference_lines)):
            out.extend(f"<li class=mono>{label} line {n}: {e(w)}</li>" for n, w in bl[:MAX_BAD_SHOWN])
        out.append("</ul>")
    out.append("<h2>Method</h2><p>Every assistant turn is scored with the persona evaluator (prompt = nearest earlier user turn, "
               "no targeted traits, no context), the reference the same way. Consistency rate and per-trait adherence: pooled "
               "two-proportion z-test; consistency score and style_match: Mann-Whitney U with tie and continuity correction. "
               "Responses are treated as independent.</p></body></html>")
    return "\n".join(out)


# ---- entry point ---------------------------------------------------------------------------------


def _resolve(persona: str, evaluator: str | None, reference: str | None) -> tuple[str, str | None, str | None]:
    """A run directory given as --persona supplies persona, evaluator and held-out reference from its manifest."""
    root = Path(persona)
    if root.is_dir() and (root / "manifest.json").is_file():
        from personatune.rundir import RunDir

        rd = RunDir(root)
        persona = str(rd.output_path("02_persona", "persona"))
        if evaluator is None and rd.record("04_evaluation").status == "done":
            evaluator = str(rd.output_path("04_evaluation", "evaluator"))
        if reference is None and rd.record("03_consistency_data").status == "done":
            reference = str(rd.output_path("03_consistency_data", "heldout") / "sft.jsonl")
    return persona, evaluator, reference


def monitor_main(persona: str, evaluator: str | None, logs: str, reference: str | None = None, window: int = 200,
                 out_html: str = "drift.html", alpha: float = 0.01) -> int:
    """Entry point of `personatune monitor`.

    Args:
        persona: persona YAML, or a run directory (persona, evaluator and held-out reference from its manifest).
        evaluator: fitted evaluator folder (default: the run's; else the untrained persona scorer).
        logs: JSONL conversation log.
        reference: reference JSONL (default: the run's 03_consistency_data/heldout/sft.jsonl; none: first window).
        window: conversations per window.
        out_html: where the HTML report goes; the JSON summary goes beside it with suffix .json.
        alpha: family-wise false-alarm rate.

    Returns:
        1 when any test alerts, else 0.

    Raises:
        ConfigError, DataError, PersonaSpecError, RunDirError: bad input (the CLI prints one line, exit 2), among
            them an --out (or the .json beside it) that is a folder or one of the inputs, refused before any work.
    """
    from personatune.persona import load_persona
    from personatune.scoring.factory import build_scorer

    persona, evaluator, reference = _resolve(persona, evaluator, reference)
    out = Path(out_html)
    if out.suffix.lower() == ".json":
        raise ConfigError(f"--out {out} ends in .json, the name of the JSON summary written beside the report; fix: e.g. --out {out.with_suffix('.html')}")
    inputs = {"the log": logs, "--reference": reference, "--persona": persona, "--evaluator": evaluator}
    check_output_file(out, "--out", inputs)
    check_output_file(out.with_suffix(".json"), "--out (its .json summary)", inputs)
    # Options and input files are checked before the scorer is built (that takes seconds).
    _check_options(window, alpha)
    for what, path in (("the log", logs), ("--reference", reference)):
        if path is not None and not Path(path).is_file():
            raise DataError(f"{what} {path} is {'a folder' if Path(path).is_dir() else 'not found'}; fix: pass an existing JSONL file")
    spec = load_persona(persona)
    scorer = build_scorer(spec, evaluator_dir=evaluator)  # the fitted evaluator, else the persona's untrained scorer
    rep = run_monitor(scorer, spec.trait_ids, logs, reference, window=window, alpha=alpha)
    atomic_write_text(out, render_html(rep, spec.name))
    atomic_write_json(out.with_suffix(".json"), rep.to_dict())
    print(format_summary(rep, out))
    return 1 if rep.alert else 0


def format_summary(rep: DriftReport, out: Path | None = None) -> str:
    """A few lines for the terminal."""
    lines = [f"monitor: {rep.conversations} conversations, {rep.responses} responses, {len(rep.windows)} window(s); "
             f"{len(rep.bad_lines)} bad line(s) skipped; reference {rep.reference['responses']} responses "
             f"(consistency {_f(rep.reference['consistency_rate'])})"]
    for t in rep.alerts[:10]:
        lines.append(f"  ALERT window {t.window} {t.test}: {_f(t.value)} vs reference {_f(t.reference)} (p={_f(t.p)} < {_f(rep.threshold)})")
    if len(rep.alerts) > 10:
        lines.append(f"  ... {len(rep.alerts) - 10} more alerts")
    lines.append(f"  multi-turn contradictions: {rep.n_contradictions}")
    lines.append(("DRIFT" if rep.alert else "no drift") + (f" -> {out}" if out else ""))
    return "\n".join(lines)
