"""The report's training curves: stage 5's evaluation steps (metrics.jsonl) and stage 6's rounds (rounds.jsonl).

Rows are read as records.StepRow / records.RoundRow. KL wording: rows written since drift KL name their
reference (`kl_reference`) or carry `persona_shift`, and their `kl` is drift KL; older rows' `kl` is against the
unprompted baseline and is drawn and headed as such, never as drift KL (`KLBearing.kl_is_drift`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from personatune.records import KLBearing, Record, RoundRow, StepRow
from personatune.report.cells import absent, ci_text, esc, fmt, section, table
from personatune.report.charts import ChartStyle, line_chart
from personatune.report.load import DRIFT_KL, KL_UNIT, OLD_KL, PERSONA_SHIFT, RunData, dig, num

TABLE_LIMIT = 300  # rows of metrics.jsonl / rounds.jsonl listed under the charts (the charts use every row)
COLUMN_NAMES = {
    "kl_stderr": f"KL standard error ({KL_UNIT})",
    "persona_shift": f"{PERSONA_SHIFT} ({KL_UNIT})",
    "persona_shift_stderr": f"{PERSONA_SHIFT} standard error ({KL_UNIT})",
    "kl_reference": "KL reference",
}


def value(r: Record, key: str) -> Any:
    """A row's field or extra column (e.g. a `reward` a trainer logged), None when the row has neither."""
    return getattr(r, key) if key in type(r).model_fields else (r.model_extra or {}).get(key)


def kl_header(rows: Sequence[KLBearing]) -> str:
    """The name of the `kl` column of metrics rows, with its unit: drift KL, or the old KL to the unprompted baseline."""
    kinds = {r.kl_is_drift for r in rows if num(r.kl) is not None} or {True}
    if kinds == {True}:
        return f"{DRIFT_KL} ({KL_UNIT})"
    if kinds == {False}:
        return f"{OLD_KL} ({KL_UNIT})"
    return f"KL ({KL_UNIT}): {DRIFT_KL} in rows with kl_reference, else to the unprompted baseline (written before drift KL)"


def _series(
    rows: Sequence[KLBearing], x_key: str, keep: Callable[[KLBearing], bool], key: str
) -> tuple[list[tuple[float, float | None]], list[tuple[float, float, float]]]:
    """The points of one KL series and its ± one standard-error band (`<key>_stderr`)."""
    sel = [r for r in rows if keep(r) and num(value(r, key)) is not None]
    pts = [(num(value(r, x_key)), num(value(r, key))) for r in sel]
    band = [
        (
            num(value(r, x_key)),
            num(value(r, key)) - num(value(r, key + "_stderr")),
            num(value(r, key)) + num(value(r, key + "_stderr")),
        )
        for r in sel
        if num(value(r, key + "_stderr")) is not None
    ]
    return pts, band  # type: ignore[return-value]


def _kl_charts(rows: Sequence[KLBearing], x_key: str, x_label: str, budget: float) -> str:
    """Drift KL (with the budget) and persona shift per step or round, each with its ± one standard-error band; the
    `kl` of rows written before drift KL is drawn as its own series, labelled as KL to the unprompted baseline."""
    lines: dict[str, Any] = {}
    bands: dict[str, Any] = {}
    for name, keep, key in (
        (DRIFT_KL, lambda r: r.kl_is_drift, "kl"),
        (PERSONA_SHIFT, lambda r: True, "persona_shift"),
        (OLD_KL, lambda r: not r.kl_is_drift, "kl"),
    ):
        pts, band = _series(rows, x_key, keep, key)
        if pts:
            lines[name], bands[name] = pts, band
    if not lines:
        return ""
    notes = []
    if DRIFT_KL in lines:
        notes.append(
            f"{DRIFT_KL} = KL(policy(·|x) ‖ baseline(·|persona context, x)) in {KL_UNIT}, gated by the budget line"
        )
    if PERSONA_SHIFT in lines:
        notes.append(f"{PERSONA_SHIFT} = KL(policy(·|x) ‖ baseline(·|x)) in {KL_UNIT}, information, not a gate")
    if OLD_KL in lines:
        notes.append(
            f"{OLD_KL}: KL(policy ‖ baseline without the persona context) in {KL_UNIT}; not comparable with the budget of drift KL"
        )
    what = " and ".join(n for n in (DRIFT_KL, PERSONA_SHIFT, OLD_KL) if n in lines)
    style = ChartStyle(bands=bands, thresholds=[("budget", budget)], title=f"{what} per {x_label} ({KL_UNIT})")
    return (
        line_chart(lines, x_label=x_label, y_label=f"KL ({KL_UNIT})", style=style)
        + f'<p class="note">{esc("; ".join(notes))}. Bands: ± one standard error.</p>'
    )


def _curves_for(rows: Sequence[StepRow] | Sequence[RoundRow], x_key: str, x_label: str, rd: RunData) -> str:
    """KL, persona-quality and style-variance charts for metrics rows keyed by step or round, and the rows as a table."""
    g = dig(rd.config, "gates", "optimization") or {}
    rows = [r for r in rows if num(value(r, x_key)) is not None]
    if not rows:
        return f'<p class="note">no rows with a numeric {esc(x_key)!s}.</p>'
    pts = lambda k: [(num(value(r, x_key)), num(value(r, k))) for r in rows]  # noqa: E731 - one-line accessor
    has = lambda k: any(num(value(r, k)) is not None for r in rows)  # noqa: E731
    out = _kl_charts(rows, x_key, x_label, num(g.get("max_kl")) or 0.1)
    quality = {k: pts(k) for k in ("consistency", "adherence", "reward") if has(k)}
    if quality:
        ys = [y for s in quality.values() for _, y in s if y is not None]
        # Stage 6 records the consistency rate's Wilson interval per round: drawn as a band.
        cis = [(r, value(r, "consistency_ci")) for r in rows]
        cband = [(num(value(r, x_key)), num(ci[0]), num(ci[1])) for r, ci in cis if ci_text(ci) != "—"]
        thresholds = [
            (n, t)
            for n, t in (
                ("consistency", num(g.get("consistency")) or 0.85),
                ("adherence", num(g.get("adherence")) or 0.9),
            )
            if n in quality
        ]
        style = ChartStyle(
            y_range=(0.0, 1.0) if all(0 <= y <= 1 for y in ys) else None,
            thresholds=thresholds,
            bands={"consistency": cband} if cband else None,
            title=f"persona metrics per {x_label}",
        )
        out += line_chart(quality, x_label=x_label, y_label="fraction / reward", style=style)
    if has("style_variance"):
        style = ChartStyle(
            thresholds=[("gate", num(g.get("max_style_variance")) or 0.15)], title=f"style variance per {x_label}"
        )
        out += line_chart(
            {"style variance": pts("style_variance")}, x_label=x_label, y_label="style variance", style=style
        )
    # The table lists the file's own columns, in its order (Record.to_json keeps both).
    flat = [r.to_json() for r in rows]
    keys = list(dict.fromkeys(k for d in flat for k in d))
    cols = [k for k in keys if all(not isinstance(d.get(k), (dict, list)) for d in flat)]
    shown = flat[-TABLE_LIMIT:]
    what = f"all {len(rows)} rows" if len(shown) == len(rows) else f"last {len(shown)} of {len(rows)} rows"
    names = {**COLUMN_NAMES, "kl": kl_header(rows)}
    out += (
        f"<details><summary>{what}</summary>"
        + table(
            [names.get(c, c) for c in cols],
            [[f'<td class="num">{esc(fmt(d.get(c)))}</td>' for c in cols] for d in shown],
        )
        + "</details>"
    )
    return out


def _pm(r: RoundRow, key: str) -> str:
    """A KL figure with its standard error: "0.08 ± 0.004"."""
    se = num(value(r, key + "_stderr"))
    return fmt(num(value(r, key))) + (f" ± {fmt(se)}" if se is not None else "")


def _rounds_table(rows: Sequence[RoundRow]) -> str:
    """Stage 6's rounds (rounds.jsonl): one row per round, the kept one marked."""
    if not rows:
        return ""
    kept = [r for r in rows if r.kept is True]
    shift = any(num(r.persona_shift) is not None for r in rows)
    head = (
        ["round", kl_header(rows)]
        + ([f"{PERSONA_SHIFT} ({KL_UNIT})"] if shift else [])
        + ["consistency [95% CI]", "adherence", "style variance", "pairs", "steps", "gate", "kept", "seconds"]
    )
    body = []
    for r in rows:
        cons = fmt(num(r.consistency)) + (f" [{ci_text(r.consistency_ci)}]" if ci_text(r.consistency_ci) != "—" else "")
        gcell = (
            '<td class="res">—</td>' if r.passed is None else f'<td class="res">{"PASS" if r.passed else "FAIL"}</td>'
        )
        cells = [f'<td class="num">{esc(fmt(r.round))}</td>', f'<td class="num">{esc(_pm(r, "kl"))}</td>']
        cells += [f'<td class="num">{esc(_pm(r, "persona_shift"))}</td>'] if shift else []
        cells += [f'<td class="num">{esc(cons)}</td>']
        cells += [f'<td class="num">{esc(fmt(num(x)))}</td>' for x in (r.adherence, r.style_variance, r.pairs, r.steps)]
        cells += [
            gcell,
            f"<td>{'<b>kept</b>' if r.kept is True else ''}</td>",
            f'<td class="num">{esc(fmt(num(r.seconds)))}</td>',
        ]
        cls = "pass" if r.passed is True else "fail" if r.passed is False else ""
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    note = (
        f"Kept: round {esc(fmt(kept[-1].round))} (the best round whose stage-5 gate passed)."
        if kept
        else "No round is marked kept."
    )
    return (
        f'<p class="note">{note}</p><table><thead><tr>'
        + "".join(f"<th>{esc(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def curves_section(rd: RunData) -> str:
    """Stage 5's curves over evaluation steps, then stage 6's rounds table and curves over rounds."""
    steps = rd.typed_rows(StepRow, rd.path("05_optimization", "metrics", "metrics.jsonl"))
    rounds = rd.typed_rows(RoundRow, rd.path("06_iterations", "rounds", "rounds.jsonl"))
    body = "<h3>Optimization: evaluation steps (stage 5)</h3>"
    body += _curves_for(steps, "step", "step", rd) if steps else absent(rd, "05_optimization", "metrics.jsonl")
    body += "<h3>Iterative rounds (stage 6)</h3>"
    body += (
        (_rounds_table(rounds) + _curves_for(rounds, "round", "round", rd))
        if rounds
        else absent(rd, "06_iterations", "rounds.jsonl")
    )
    return section("curves", "Training curves (stages 5-6)", body)
