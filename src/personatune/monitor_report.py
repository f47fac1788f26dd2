"""The self-contained HTML drift report of `personatune monitor` (inline CSS and SVG, nothing fetched).

Built from a `DriftReport` (personatune.monitor_drift) only: per-window line charts with the reference line,
the alerting tests, multi-turn contradiction examples and the unreadable log lines.
"""

from __future__ import annotations

import html
import math
from typing import Any

from personatune.monitor_drift import DriftReport

MAX_EXAMPLES = 10
"""Contradiction examples shown in the report."""
MAX_BAD_SHOWN = 50
"""Unreadable lines listed in the report (all are counted)."""

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
        return f"{x:.{digits}g}" if (x != 0 and abs(x) < 10**-digits) else f"{x:.{digits}f}"
    return html.escape(str(x))


def _line_chart(
    title: str, values: list[float], ref: float, cis: list[tuple[float, float]] | None, alerts: set[int]
) -> str:
    """An inline SVG: one point per window (with interval bars), the reference as a dashed line, alerts in red."""
    w, h, pad = 760, 220, 40
    n = max(1, len(values))
    xs = [pad + (i + 0.5) * (w - 2 * pad) / n for i in range(len(values))]

    def y(v: float) -> float:  # a value in [0, 1] (clipped) to its SVG row, 1 at the top
        return h - pad - (min(max(v, 0.0), 1.0)) * (h - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>',
        f'<text x="{pad}" y="18" font-size="13">{html.escape(title)}</text>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{pad}" x2="{w - pad}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>'
            f'<text x="{pad - 6}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end">{tick:.2f}</text>'
        )
    if math.isfinite(ref):
        parts.append(
            f'<line x1="{pad}" x2="{w - pad}" y1="{y(ref):.1f}" y2="{y(ref):.1f}" stroke="#555" stroke-dasharray="5,4"/>'
            f'<text x="{w - pad}" y="{y(ref) - 4:.1f}" font-size="10" text-anchor="end">reference {ref:.3f}</text>'
        )
    pts = [(x, v) for x, v in zip(xs, values) if math.isfinite(v)]
    if len(pts) > 1:
        parts.append(
            '<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="'
            + " ".join(f"{x:.1f},{y(v):.1f}" for x, v in pts)
            + '"/>'
        )
    for i, (x, v) in enumerate(zip(xs, values)):
        if not math.isfinite(v):
            continue
        color = "#c62828" if i in alerts else "#1565c0"
        if cis:
            lo, hi = cis[i]
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" stroke="{color}" opacity="0.6"/>'
            )
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y(v):.1f}" r="3.5" fill="{color}"><title>window {i}: {v:.3f}</title></circle>'
        )
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
    verdict = (
        f'<p class="verdict v-alert">ALERT: {len(rep.alerts)} test(s) in {len(alert_windows)} window(s) show a significant drop '
        f"(family-wise alpha {rep.alpha:g}, per-test threshold {_f(rep.threshold)}).</p>"
        if rep.alert
        else f'<p class="verdict v-ok">No drift detected: no test below the per-test threshold {_f(rep.threshold)} '
        f"(family-wise alpha {rep.alpha:g}, {rep.n_tests} tests).</p>"
    )
    ref = rep.reference
    out = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>personatune drift report: {e(persona_name)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Persona drift report: {e(persona_name)}</h1>",
        verdict,
        f"<p>{rep.conversations} conversations, {rep.responses} assistant responses, {len(rep.windows)} window(s) of "
        f"{rep.window_size} conversations; {len(rep.bad_lines)} unreadable line(s) skipped. Reference: {e(rep.reference_source)}, "
        f"{ref['responses']} responses, consistency rate {_f(ref['consistency_rate'])}.</p>",
        "<h2>Consistency rate per window</h2>",
        _line_chart(
            "consistency rate (Wilson 95% interval)",
            [w.consistency_rate for w in rep.windows],
            ref["consistency_rate"],
            [w.consistency_ci for w in rep.windows],
            cons_alerts,
        ),
        _line_chart(
            "mean style_match", [w.style_match_mean for w in rep.windows], ref["style_match_mean"], None, style_alerts
        ),
        "<h2>Windows</h2><table><tr><th>window</th><th class=l>log lines</th><th>conversations</th><th>responses</th>"
        "<th>consistency rate</th><th>95% interval</th><th>mean consistency</th><th>mean style_match</th><th>mean words</th><th>alerts</th></tr>",
        f"<tr><td class=l>reference</td><td class=l>-</td><td>-</td><td>{ref['responses']}</td><td>{_f(ref['consistency_rate'])}</td>"
        f"<td>{_f(ref['consistency_ci'][0])}-{_f(ref['consistency_ci'][1])}</td><td>{_f(ref['consistency_mean'])}</td>"
        f"<td>{_f(ref['style_match_mean'])}</td><td>{_f(ref['words_mean'], 1)}</td><td>-</td></tr>",
    ]
    for w in rep.windows:
        k = sum(t.alert for t in rep.tests if t.window == w.index)
        out.append(
            f"<tr{' class=alert' if k else ''}><td>{w.index}</td><td class=l>{w.first_line}-{w.last_line}</td><td>{w.conversations}</td>"
            f"<td>{w.responses}</td><td>{_f(w.consistency_rate)}</td><td>{_f(w.consistency_ci[0])}-{_f(w.consistency_ci[1])}</td>"
            f"<td>{_f(w.consistency_mean)}</td><td>{_f(w.style_match_mean)}</td><td>{_f(w.words_mean, 1)}</td><td>{k}</td></tr>"
        )
    out.append("</table>")
    traits = list(ref["adherence"])
    if traits:
        out.append(
            "<h2>Trait adherence per window</h2><p>Share of responses that do not violate the trait (no trait is targeted in "
            "logs). Red: significant drop.</p><table><tr><th class=l>trait</th><th>reference</th>"
            + "".join(f"<th>w{w.index}</th>" for w in rep.windows)
            + "</tr>"
        )
        flagged = {(t.window, t.test) for t in rep.alerts}
        for t in traits:
            cells = "".join(
                f"<td{' class=alert' if (w.index, f'adherence[{t}]') in flagged else ''}>{_f(w.adherence.get(t))}</td>"
                for w in rep.windows
            )
            out.append(f"<tr><td class=l>{e(t)}</td><td>{_f(ref['adherence'][t])}</td>{cells}</tr>")
        out.append("</table>")
    out.append(
        f"<h2>Tests</h2><p>One-sided (H1: the window is worse than the reference). Bonferroni over {rep.n_tests} tests: "
        f"a test alerts when p &lt; {rep.alpha:g}/{rep.n_tests} = {_f(rep.threshold)}. Rates for z-tests, medians for Mann-Whitney.</p>"
        "<table><tr><th>window</th><th class=l>test</th><th class=l>method</th><th>reference</th><th>window</th><th>n</th>"
        "<th>z</th><th>p</th><th>alert</th></tr>"
    )
    for t in sorted(rep.tests, key=lambda t: (not t.alert, t.window, t.test)):
        out.append(
            f"<tr{' class=alert' if t.alert else ''}><td>{t.window}</td><td class=l>{e(t.test)}</td><td class=l>{e(t.method)}</td>"
            f"<td>{_f(t.reference)}</td><td>{_f(t.value)}</td><td>{t.n}</td><td>{_f(t.z, 2)}</td><td>{_f(t.p)}</td>"
            f"<td>{'ALERT' if t.alert else ''}</td></tr>"
        )
    out.append("</table>")
    out.append(
        f"<h2>Multi-turn contradictions</h2><p>{rep.n_contradictions} contradiction(s) in {rep.conversations_multi_turn} "
        "conversation(s) with two or more assistant turns: a later turn violates (violations[t] &ge; 0.5) a trait an earlier "
        "turn expressed (traits[t] &ge; 0.5, not violated).</p>"
    )
    for c in rep.contradictions[:MAX_EXAMPLES]:
        out.append(
            f"<div class=ex>line {c['line']}, trait <b>{e(c['trait'])}</b>: turn {c['earlier_turn']} "
            f"<q>{e(c['earlier'])}</q><br>later turn {c['later_turn']} (violation {c['violation']:.2f}) <q>{e(c['later'])}</q></div>"
        )
    if rep.bad_lines or rep.bad_reference_lines:
        out.append(
            f"<h2>Unreadable lines</h2><p>{len(rep.bad_lines)} in the log, {len(rep.bad_reference_lines)} in the reference "
            f"(first {MAX_BAD_SHOWN} shown).</p><ul>"
        )
        for label, bl in (("log", rep.bad_lines), ("reference", rep.bad_reference_lines)):
            out.extend(f"<li class=mono>{label} line {n}: {e(w)}</li>" for n, w in bl[:MAX_BAD_SHOWN])
        out.append("</ul>")
    out.append(
        "<h2>Method</h2><p>Every assistant turn is scored with the persona evaluator (prompt = nearest earlier user turn, "
        "no targeted traits, no context), the reference the same way. Consistency rate and per-trait adherence: pooled "
        "two-proportion z-test; consistency score and style_match: Mann-Whitney U with tie and continuity correction. "
        "Responses are treated as independent.</p></body></html>"
    )
    return "\n".join(out)
