"""The report's building blocks: escaping, number formats, table cells, badges and section frames.

Every string read from a run file passes through `esc` before it reaches the page. The section modules
(sections.py, curves.py, final.py) and the page shell (html.py) build on these.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any, Sequence

from personatune.records import MeasurementRecord
from personatune.report.charts import heat_color
from personatune.report.load import STAGE_TITLES, RunData, num

# Contexts in the order the prompt bank defines them (personatune.scenarios.CONTEXTS); others follow sorted.
CONTEXT_ORDER = ("casual", "technical", "emotional", "adversarial", "multi_turn", "off_topic")


def esc(x: Any) -> str:
    """HTML-escape any value's text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(x), quote=True)


def fmt(v: Any) -> str:
    """A value as short text: 4 significant digits for floats, "—" for None."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str)) for x in v):
        return ", ".join(fmt(x) for x in v)
    if isinstance(v, (dict, list)):
        s = json.dumps(v, default=str)
        return s if len(s) <= 240 else s[:237] + "…"
    return str(v)


def ci_text(ci: Any) -> str:
    """ "lo..hi" for a 2-element interval, "—" otherwise."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(num(c) is not None for c in ci):
        return f"{ci[0]:.3g}..{ci[1]:.3g}"
    return "—"


def as_text(x: Any) -> str:
    """A prompt or response as plain text: chat messages become 'role: content' lines."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and all(isinstance(m, dict) and "content" in m for m in x):
        return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in x)
    return "" if x is None else fmt(x)


def as_list(x: Any) -> list[Any]:
    """`x` when it is a list, else [] (a string must not be iterated letter by letter)."""
    return x if isinstance(x, list) else []


def table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A table from already-escaped cell HTML (a cell string starting with '<td' is used as is)."""
    h = "".join(f"<th>{esc(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _kv(obj: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Flatten nested mappings to (dotted key, value) rows, three levels deep."""
    rows: list[tuple[str, Any]] = []
    for k, v in obj.items():
        if isinstance(v, dict) and depth < 2 and not ({"value"} <= set(v) and len(v) <= 4):
            rows += _kv(v, f"{prefix}{k}.", depth + 1)
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def kv_table(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"<p>{esc(fmt(obj))}</p>"
    rows = []
    for k, v in _kv(obj):
        if isinstance(v, dict) and "value" in v:
            v = f"{fmt(num(v))} (n={fmt(v.get('n'))}, 95% CI {ci_text(v.get('ci'))})"
        rows.append([esc(k), f'<td class="num">{esc(fmt(v))}</td>'])
    return table(["key", "value"], rows)


def badge(status: str | None, gated: bool = False) -> str:
    cls, label = {
        "done": ("b-pass", "passed" if gated else "done"),
        "gate_failed": ("b-fail", "gate failed"),
        "failed": ("b-fail", "error"),
        "gate_inconclusive": ("b-inc", "gate inconclusive"),
        "running": ("b-run", "running / stopped"),
        "interrupted": ("b-run", "interrupted"),
    }.get(status or "", ("b-none", "not run yet"))
    return f'<span class="badge {cls}">{esc(label)}</span>'


def absent(rd: RunData, stage: str, what: str) -> str:
    """The short note shown in place of a section whose artifacts do not exist."""
    status = rd.status(stage)
    title = f"stage {int(stage[:2]) if stage[:2].isdigit() else stage}, {STAGE_TITLES.get(stage, stage)},"
    if status in (None, "pending"):
        why = f"{title} has not run yet"
    elif status == "done":
        why = f"{title} finished but wrote no {what}"
    else:
        why = f"{title} did not finish (status: {status})"
    return f'<p class="note">{esc(why)} — no {esc(what)} to show.</p>'


def section(sid: str, title: str, body: str) -> str:
    """One `<section>` of the page, anchored at `sid` for the navigation bar."""
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def when(t: Any) -> str:
    """A Unix time as UTC text, "—" when it is not a number."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if num(t) is not None else "—"


def order(keys: set[str], preferred: Sequence[str]) -> list[str]:
    """`keys` in the `preferred` order first, then the rest sorted."""
    return [k for k in preferred if k in keys] + sorted(keys - set(preferred))


def heat_table(
    row_names: list[str], col_names: list[str], value: dict[tuple[str, str], float | None], *, corner: str
) -> str:
    """A table whose cells are coloured by value: red-amber-green over [0, 1], else over the values' own range."""
    vals = [v for v in value.values() if v is not None]
    lo, hi = (0.0, 1.0) if all(0 <= v <= 1 for v in vals) else (min(vals, default=0.0), max(vals, default=1.0))
    rows = [
        [esc(r)]
        + [
            f'<td class="num" style="background:{heat_color(value.get((r, c)), lo, hi)}">{esc(fmt(value.get((r, c))))}</td>'
            for c in col_names
        ]
        for r in row_names
    ]
    return table([corner, *col_names], rows)


def mcell(m: Any, digits: int = 3) -> str:
    """A measurement (a MeasurementRecord, a `{"value", "ci"}` mapping or a bare number) as a table cell: value and,
    when known, its 95% interval."""
    if isinstance(m, MeasurementRecord):
        v, ci = num(m.value), ci_text(m.ci)
    else:
        v, ci = num(m), ci_text(m.get("ci")) if isinstance(m, dict) else "—"
    if v is None:
        return '<td class="num">—</td>'
    return (
        f'<td class="num">{v:.{digits}f}' + (f' <span class="note">[{esc(ci)}]</span>' if ci != "—" else "") + "</td>"
    )
