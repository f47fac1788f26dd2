"""The report's stage-7 section (final.json, read as records.FinalRecord) and the side-by-side sample responses.

The final section: the verdict banner with its reasons, the baseline-vs-final table (drift KL and persona shift
with units, or the old KL of runs written before drift KL), the context-distillation target, capability and
lm-eval tasks, adherence per trait and the per-context heatmap. Every figure final.json lacks is shown as "—".
"""

from __future__ import annotations

from typing import Any

from personatune.records import BaselineFinal, FinalRecord, KLRecord, MeasurementRecord, Robustness, TaskDrop
from personatune.report.cells import (
    CONTEXT_ORDER,
    absent,
    as_list,
    as_text,
    ci_text,
    esc,
    fmt,
    heat_table,
    mcell,
    order,
    section,
    table,
)
from personatune.report.charts import bar_chart
from personatune.report.load import DRIFT_KL, KL_UNIT, OLD_KL, PERSONA_SHIFT, RunData, dig, num

SAMPLE_LIMIT = 24  # sample rows shown; a run can hold thousands and the page must stay light
NO_GATE = '<td class="res">—</td>'


def _bf(pair: BaselineFinal | None) -> tuple[MeasurementRecord | None, MeasurementRecord | None]:
    """(baseline, final) of a figure, (None, None) when final.json lacks it."""
    return (None, None) if pair is None else (pair.baseline, pair.final)


def _value(m: MeasurementRecord | None) -> float | None:
    return None if m is None else num(m.value)


def _verdict_banner(final: FinalRecord) -> str:
    """DEPLOY or NO-DEPLOY in a coloured banner, with final.json's reasons."""
    if final.verdict not in ("DEPLOY", "NO-DEPLOY"):
        return '<p class="note">final.json holds no verdict.</p>'
    reasons = [final.reasons] if isinstance(final.reasons, str) else [str(r) for r in final.reasons]
    cls = "banner-pass" if final.verdict == "DEPLOY" else "banner-fail"
    what = "every stage-7 gate passed" if final.verdict == "DEPLOY" else "why"
    items = "".join(f"<li>{esc(r)}</li>" for r in reasons)
    return f'<div class="banner {cls}"><b>{esc(final.verdict)}</b> — {what}{"<ul>" + items + "</ul>" if items else ""}</div>'


def _drop_table(title: str, tasks: dict[str, TaskDrop], keys: tuple[str, ...], metric: bool = False) -> str:
    """A per-task regression table: baseline, final, drop, allowed drop, n and ok/DROP (capability suite, lm-eval tasks)."""
    rows = []
    for t, d in tasks.items():
        res = NO_GATE if d.ok is None else f'<td class="res">{"ok" if d.ok else "DROP"}</td>'
        rows.append(
            f'<tr class="{"pass" if d.ok is True else "fail" if d.ok is False else ""}"><td>{esc(str(t))}</td>'
            + (f"<td>{esc(str(d.metric or ''))}</td>" if metric else "")
            + "".join(f'<td class="num">{esc(fmt(num(getattr(d, k))))}</td>' for k in keys)
            + res
            + "</tr>"
        )
    head = (
        "<th>task</th>"
        + ("<th>metric</th>" if metric else "")
        + "<th>baseline</th><th>final</th><th>drop</th><th>allowed drop</th><th>n</th><th>result</th>"
    )
    return f"<h3>{esc(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def _distillation_target(final: FinalRecord) -> str:
    """Baseline without a system prompt | baseline with the persona prompt | final without one: how close the final
    model came to the context-distillation target (final.json `prompted_baseline`); empty for runs without it."""
    pb = final.prompted_baseline
    if pb is None:
        return ""
    ot = final.on_task
    rows = [
        ("consistency rate", *_bf(final.consistency), pb.consistency),
        ("on-task rate", *(_bf(ot) if ot else (None, None)), pb.on_task),
        ("trait adherence", *_bf(final.adherence), pb.adherence),
    ]
    trs = "".join(f"<tr><td>{esc(label)}</td>{mcell(b)}{mcell(p)}{mcell(f)}</tr>" for label, b, f, p in rows)
    gap = num(pb.gap_closed)
    note = (
        f"The persona-prompted baseline ({fmt(pb.context)}) is the target of context distillation and the reference of drift KL; "
        f"same {fmt(pb.n)} prompts, decoding and evaluator. "
        + (
            f"Share of the consistency gap the final model closed: {gap:.3f} ((final − baseline) / (prompted − baseline))."
            if gap is not None
            else "The persona prompt did not raise the baseline's consistency, so there is no gap to close."
        )
    )
    return (
        "<h3>Context-distillation target: the baseline with the persona prompt</h3>"
        "<table><thead><tr><th>metric</th><th>baseline, no system prompt</th><th>baseline with the persona prompt</th>"
        f"<th>final, no system prompt</th></tr></thead><tbody>{trs}</tbody></table>"
        f'<p class="note">{esc(note)}</p>'
    )


def _kl_text(d: KLRecord | None) -> str:
    """ "0.061 ± 0.004 nats/token over 900 tokens", or "" when not measured."""
    if d is None or num(d.kl_per_token) is None:
        return ""
    return f"{fmt(num(d.kl_per_token))} ± {fmt(num(d.kl_per_token_stderr))} {KL_UNIT} over {fmt(d.tokens)} tokens"


def _comparison_rows(final: FinalRecord) -> list[tuple[str, Any, Any, str, str]]:
    """The baseline-vs-final table's rows: (label, baseline, final, figure text, gate cell)."""
    gates = {g.metric: g.passed for g in final.gates}
    undecided = {g.metric for g in final.gates if g.status == "inconclusive"}

    def gcell(k: str) -> str:
        if gates.get(k) is None:
            return NO_GATE
        return (
            '<td class="res">INCONCLUSIVE</td>'
            if k in undecided
            else f'<td class="res">{"PASS" if gates[k] else "FAIL"}</td>'
        )

    imp, ret, rob = final.improvement, final.retention, final.robustness or Robustness()
    sv = final.style_variance
    rows = []
    imp_txt = (
        f"improvement {fmt(num(imp.value))} (95% CI {ci_text(imp.ci)}; {fmt(imp.method)})"
        if imp is not None and num(imp.value) is not None
        else ""
    )
    rows.append(("consistency rate", *_bf(final.consistency), imp_txt, gcell("persona_improvement_ci_low")))
    rows.append(("trait adherence", *_bf(final.adherence), "", NO_GATE))
    rows.append(("style variance", *((None, None) if sv is None else (sv.baseline, sv.final)), "", NO_GATE))
    rows.append(
        (
            "capability suite score",
            ret and ret.baseline_score,
            ret and ret.final_score,
            f"retention {fmt(num(ret.value))} (n={fmt(ret.n_items)} items)" if ret and ret.to_json() else "",
            gcell("capability_retention"),
        )
    )
    ot = final.on_task
    ot_ret = ot.retention if ot else None
    ot_txt = (
        f"retention {fmt(num(ot_ret.value))} (95% CI {ci_text(ot_ret.ci)}) {fmt(ot_ret.note or '')}"
        if ot_ret is not None
        else ""
    )
    rows.append(
        (
            "on-task rate (answers the request)",
            *((ot.baseline, ot.final) if ot else (None, None)),
            ot_txt,
            gcell("on_task_retention"),
        )
    )
    rows.append(
        (
            "perplexity (general text)",
            dig(final.perplexity, "baseline", "perplexity"),
            dig(final.perplexity, "final", "perplexity"),
            "",
            NO_GATE,
        )
    )
    rows.append(
        (
            f"robustness: {fmt(rob.context or 'adversarial')} prompts answered in persona (n={fmt(rob.n)})",
            rob.before,
            rob.after,
            "reported, not gated",
            NO_GATE,
        )
    )
    if final.kl_is_drift:
        kl, shift = _kl_text(final.kl), _kl_text(final.persona_shift)
        rows.append(
            (
                f"{DRIFT_KL}: KL(final ‖ baseline given the persona context), {KL_UNIT}",
                None,
                None,
                kl + ("; reported here, gated in stages 5-6" if kl else ""),
                NO_GATE,
            )
        )
        rows.append(
            (
                f"{PERSONA_SHIFT}: KL(final ‖ baseline without it), {KL_UNIT}",
                None,
                None,
                shift + ("; information, not a gate" if shift else ""),
                NO_GATE,
            )
        )
    else:
        rows.append((f"{OLD_KL}: KL(final ‖ baseline), {KL_UNIT}", None, None, _kl_text(final.kl), NO_GATE))
    return rows


def _per_context(final: FinalRecord) -> str:
    """The per-context heatmap: consistency and adherence, baseline and final (or a flat baseline/final of older files)."""
    pc = final.per_context
    if not pc:
        return ""
    ctxs = order(set(pc), CONTEXT_ORDER)
    if any(v.consistency is not None or v.adherence is not None for v in pc.values()):
        cols = [
            ("consistency", "baseline"),
            ("consistency", "final"),
            ("adherence", "baseline"),
            ("adherence", "final"),
        ]
        value = {
            (c, f"{m} {w}"): _value(getattr(getattr(pc[c], m), w) if getattr(pc[c], m) is not None else None)
            for c in ctxs
            for m, w in cols
        }
        names = [f"{m} {w}" for m, w in cols]
    else:  # a flat {"baseline": x, "final": y} per context (kept as the record's extra keys)
        names = ["baseline", "final"]
        value = {(c, k): num((pc[c].model_extra or {}).get(k)) for c in ctxs for k in names}
    return (
        "<h3>Per context, baseline vs final</h3>"
        + heat_table(ctxs, names, value, corner="context")
        + '<p class="note">Colour runs from red (0) through amber (0.5) to green (1).</p>'
    )


def final_section(rd: RunData, final: FinalRecord | None, traits: list[str]) -> str:
    """Stage 7: the verdict and every figure behind it (see the module docstring), or the note that it has not run."""
    title = "Final evaluation (stage 7)"
    if final is None:
        return section("final", title, absent(rd, "07_final_eval", "final.json"))
    trs = []
    for label, b, f, fig, g in _comparison_rows(final):
        cls = "pass" if "PASS" in g else "fail" if "FAIL" in g else "inc" if "INCONCLUSIVE" in g else ""
        trs.append(f'<tr class="{cls}"><td>{esc(label)}</td>{mcell(b)}{mcell(f)}<td>{esc(fig)}</td>{g}</tr>')
    body = _verdict_banner(final)
    body += (
        f"<h3>Baseline vs final ({esc(fmt(final.n_prompts))} held-out prompts, no system prompt, the same decoding)</h3>"
        "<table><thead><tr><th>metric</th><th>baseline</th><th>final</th><th>figure</th><th>gate</th></tr></thead><tbody>"
        + "".join(trs)
        + "</tbody></table>"
    )
    body += _distillation_target(final)
    ret, lm = final.retention, final.lm_eval
    if ret is not None and ret.tasks:
        body += _drop_table("Capability per task", ret.tasks, ("baseline", "candidate", "drop", "allowed", "n"))
        body += f'<p class="note">{esc(ret.task_rule or "allowed drop: the baseline accuracy minus its Wilson 95% lower bound")}.</p>'
    if lm is not None and (lm.tasks or lm.not_compared):
        body += (
            _drop_table(
                "lm-evaluation-harness tasks", lm.tasks, ("baseline", "final", "drop", "allowed", "n"), metric=True
            )
            + "".join(
                f'<p class="note">{esc(str(t))}: not compared ({esc(str(why))}).</p>'
                for t, why in lm.not_compared.items()
            )
            + f'<p class="note">{esc(str(lm.rule or ""))}.</p>'
        )
    if final.per_trait:
        pt = final.per_trait
        names = order(set(pt), traits)
        body += "<h3>Adherence per trait, baseline vs final</h3>" + bar_chart(
            names,
            {"baseline": [_value(pt[t].baseline) for t in names], "final": [_value(pt[t].final) for t in names]},
            title="baseline vs final adherence per trait",
        )
    body += _per_context(final)
    if final.earlier_gates:
        items = [
            f"{esc(s)}: {esc(fmt(e.status))}, gate {esc({True: 'passed', False: 'FAILED', None: 'n/a'}[e.gate_passed])}"
            for s, e in final.earlier_gates.items()
        ]
        body += (
            "<details><summary>earlier stages, as the manifest recorded them</summary><ul>"
            + "".join(f"<li>{i}</li>" for i in items)
            + "</ul></details>"
        )
    return section("final", title, body)


def _score(x: Any) -> str:
    """The evaluator's consistency score under a reply, or "" when it has none."""
    v = num(x)
    return "" if v is None else f"\n[consistency {v:.2f}]"


def samples_section(rd: RunData) -> str:
    """Held-out prompts with the baseline's, the persona-prompted baseline's and the final model's replies side by side
    (07_final_eval/samples.json), or stage 4's baseline replies alone before stage 7 has run."""
    title = "Sample responses"
    samples = [s for s in as_list(rd.json(rd.path("07_final_eval", "samples", "samples.json"))) if isinstance(s, dict)]
    reply = lambda s, k: esc(as_text(s.get(k)) + _score(s.get(f"{k}_consistency")))  # noqa: E731
    if samples and any("baseline_prompted" in s for s in samples):
        rows = [
            [
                esc(s.get("context", "")),
                esc(as_text(s.get("prompt"))),
                reply(s, "baseline"),
                reply(s, "baseline_prompted") if "baseline_prompted" in s else '<td class="note">not sampled</td>',
                reply(s, "final"),
            ]
            for s in samples[:SAMPLE_LIMIT]
        ]
        note = (
            "The same held-out prompts, the same decoding: the baseline without a system prompt, the baseline given the persona prompt "
            "(the context-distillation target) and the final model without a system prompt; the evaluator's consistency score below each reply."
        )
        head = [
            "context",
            "prompt",
            "baseline, no system prompt",
            "baseline with the persona prompt",
            "final, no system prompt",
        ]
        colgroup = (
            '<colgroup><col style="width:8%"><col style="width:17%"><col style="width:25%"><col style="width:25%"><col style="width:25%">'
            "</colgroup>"
        )
        shown = f" Showing {min(len(samples), SAMPLE_LIMIT)} of {len(samples)}." if len(samples) > SAMPLE_LIMIT else ""
        return section(
            "samples",
            title,
            f'<p class="note">{esc(note + shown)}</p>'
            + table(head, rows, "samples").replace("<thead>", colgroup + "<thead>", 1),
        )
    if samples:
        rows = [
            [esc(s.get("context", "")), esc(as_text(s.get("prompt"))), reply(s, "baseline"), reply(s, "final")]
            for s in samples[:SAMPLE_LIMIT]
        ]
        note = (
            "Baseline and final model on the same held-out prompts, no system prompt, the same decoding; the evaluator's consistency score below each reply. "
            "This run's stage 7 predates the persona-prompted baseline column."
        )
    else:
        base = rd.json(rd.path("04_evaluation", "baseline_samples", "baseline_samples.json"))
        samples = [s for s in as_list(base) if isinstance(s, dict)]
        if not samples:
            return section("samples", title, absent(rd, "07_final_eval", "samples.json"))
        rows = [
            [
                esc(s.get("context", "")),
                esc(as_text(s.get("prompt"))),
                esc(as_text(s.get("response"))),
                '<td class="note">not run yet</td>',
            ]
            for s in samples[:SAMPLE_LIMIT]
        ]
        note = "Baseline model on held-out prompts, no system prompt (stage 4); the final model's column fills in after stage 7."
    head = ["context", "prompt", "baseline, no system prompt", "final, no system prompt"]
    shown = f" Showing {min(len(samples), SAMPLE_LIMIT)} of {len(samples)}." if len(samples) > SAMPLE_LIMIT else ""
    colgroup = '<colgroup><col style="width:10%"><col style="width:24%"><col style="width:33%"><col style="width:33%"></colgroup>'
    return section(
        "samples",
        title,
        f'<p class="note">{esc(note + shown)}</p>'
        + table(head, rows, "samples").replace("<thead>", colgroup + "<thead>", 1),
    )
