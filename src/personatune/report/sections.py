"""The report's sections for the quality gates and stages 1-4: baseline, persona, data coverage, persona evaluation.

Each function takes the opened run (load.RunData) and returns one `<section>`, or the note of the stage that
has not written its file yet. Stage 5-6 curves are in curves.py, stage 7 and the samples in final.py.
"""

from __future__ import annotations

from typing import Any

from personatune.gates import shown
from personatune.records import (
    AdherenceFigures,
    BaselinePersona,
    BaselineRecord,
    EvaluationReport,
    GateResultRecord,
    MeasurementRecord,
    figure_value,
)
from personatune.report.cells import (
    CONTEXT_ORDER,
    absent,
    as_list,
    badge,
    ci_text,
    esc,
    fmt,
    kv_table,
    order,
    section,
    table,
    when,
)
from personatune.report.charts import bar_chart, count_color, heat_color
from personatune.report.load import STAGE_TITLES, RunData, dig, num


def stage_strip(rd: RunData) -> str:
    """The header's row of stages: id, title, status badge and run time of each."""
    parts = []
    for sid in rd.stage_ids:
        rec = rd.record(sid)
        st = rd.status(sid)
        cls = {
            "done": "s-pass",
            "gate_failed": "s-fail",
            "gate_inconclusive": "s-inc",
            "failed": "s-fail",
            "running": "s-run",
            "interrupted": "s-run",
        }.get(st or "", "s-none")
        secs = f" · {num(rec.get('seconds')):.1f}s" if num(rec.get("seconds")) is not None else ""
        parts.append(
            f'<div class="{cls}"><b>{esc(sid)}</b><br>{esc(STAGE_TITLES.get(sid, sid))}<br>{badge(st, bool(rec.get("gate")))}{esc(secs)}</div>'
        )
    return f'<div class="strip">{"".join(parts)}</div>'


def _value_text(r: GateResultRecord) -> str:
    """A gate's value as the CLI line shows it (`gates.shown`: never on the wrong side of its threshold)."""
    v, t = num(r.value), num(r.threshold)
    if v is None or t is None or r.direction not in (">=", ">", "<=", "<"):
        return fmt(r.value)
    return shown(v, t, r.direction)


def _gate_table(results: list[GateResultRecord]) -> str:
    """One row per gate result: value against threshold, unit, n, interval, PASS / FAIL / INCONCLUSIVE, and what it measures."""
    rows = []
    for r in results:
        state = "inc" if r.status == "inconclusive" else ("pass" if r.passed else "fail")
        res = f'<td class="res">{ {"pass": "PASS", "fail": "FAIL", "inc": "INCONCLUSIVE"}[state] }</td>'
        thr = f"{r.direction or ''} {fmt(r.threshold)}"
        note = " ".join(x for x in (r.description, r.note) if x)
        rows.append(
            (
                state,
                [
                    esc(r.metric),
                    f'<td class="num">{esc(_value_text(r))}</td>',
                    f'<td class="num">{esc(thr)}</td>',
                    esc(r.unit),
                    f'<td class="num">{esc(fmt(r.n))}</td>',
                    f'<td class="num">{esc(ci_text(r.ci))}</td>',
                    res,
                    esc(note),
                ],
            )
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("metric", "value", "threshold", "unit", "n", "95% CI", "result", "what / note")
    )
    body = "".join(
        f'<tr class="{state}">' + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>"
        for state, cells in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def gates_section(rd: RunData) -> str:
    """Every stage's gate (gate.json, else the manifest's summary), its run time, message, error and diagnosis."""
    out = []
    for sid in rd.stage_ids:
        rec = rd.record(sid)
        gate = rd.gate(sid)
        head = f"<h3>{esc(sid)} — {esc(STAGE_TITLES.get(sid, sid))} {badge(rd.status(sid), gate is not None)}</h3>"
        info = []
        if rec.get("seconds") is not None:
            info.append(f"ran {fmt(rec.get('seconds'))} s, finished {when(rec.get('finished'))}")
        if rec.get("message"):
            info.append(str(rec["message"]))
        body = "".join(f'<p class="note">{esc(i)}</p>' for i in info)
        if rec.get("error"):
            body += f'<p class="warn">error: {esc(rec["error"])}</p>'
        if gate is None:
            body += '<p class="note">no gate result.</p>' if rec else absent(rd, sid, "gate result")
        else:
            body += _gate_table(gate.results)
            diag = [("cause", d) for d in gate.diagnosis] + [("fix", s) for s in gate.next_steps]
            if diag:
                body += '<ul class="diag">' + "".join(f"<li><b>{k}:</b> {esc(v)}</li>" for k, v in diag) + "</ul>"
        out.append(head + body)
    return section("gates", "Quality gates", "".join(out))


def baseline_section(rd: RunData) -> str:
    """Stage 1 (baseline.json): the model, its sanity reply, capability suite and held-out perplexity."""
    b = rd.typed(BaselineRecord, rd.path("01_baseline", "baseline", "baseline.json"))
    if b is None:
        return section("baseline", "Baseline model (stage 1)", absent(rd, "01_baseline", "baseline.json"))
    given = b.to_json()
    rows = [
        [esc(k), f'<td class="num">{esc(fmt(given[k]))}</td>']
        for k in ("model", "path", "parameters", "load_seconds", "sft_rows", "chat_template")
        if k in given
    ]
    body = table(["field", "value"], rows)
    if b.sanity_prompt or b.sanity_reply:
        body += table(
            ["sanity prompt", "reply"],
            [[esc(b.sanity_prompt or ""), f'<td style="white-space:pre-wrap">{esc(b.sanity_reply or "")}</td>']],
        )
    cap = b.capability
    if cap is not None and cap.to_json():
        body += f"<h3>Capability suite: score {esc(fmt(num(cap.score)))} (n={esc(fmt(cap.n))})</h3>"
        if cap.tasks:
            body += table(
                ["task", "accuracy"],
                [[esc(t), f'<td class="num">{esc(fmt(num(v)))}</td>'] for t, v in cap.tasks.items()],
            )
    if b.perplexity is not None:
        body += "<h3>Held-out perplexity</h3>" + kv_table(b.perplexity)
    return section("baseline", "Baseline model (stage 1)", body)


def persona_doc(rd: RunData) -> dict[str, Any] | None:
    p = rd.path("02_persona", "persona", "persona.yaml")
    if not p.is_file():
        cands = sorted((rd.root / "02_persona").glob("*.y*ml")) if (rd.root / "02_persona").is_dir() else []
        p = cands[0] if cands else p
    doc = rd.yaml(p)
    return doc if isinstance(doc, dict) else None


def persona_section(rd: RunData, doc: dict[str, Any] | None) -> str:
    if doc is None:
        return section("persona", "Persona (stage 2)", absent(rd, "02_persona", "persona file"))
    body = f"<p><b>{esc(doc.get('name', '?'))}</b> — {esc(doc.get('summary', ''))}</p>"
    traits = [t for t in as_list(doc.get("traits")) if isinstance(t, dict)]
    if traits:
        body += table(
            ["trait", "description", "positive", "negative"],
            [
                [
                    f"<code>{esc(t.get('id', '?'))}</code>",
                    esc(t.get("description", "")),
                    f'<td class="num">{len(as_list(t.get("positive")))}</td>',
                    f'<td class="num">{len(as_list(t.get("negative")))}</td>',
                ]
                for t in traits
            ],
        )
    if isinstance(doc.get("style"), dict):
        body += "<h3>Style</h3>" + kv_table(doc["style"])
    return section("persona", "Persona (stage 2)", body)


def coverage_section(rd: RunData, traits: list[str]) -> str:
    title = "Data coverage (stage 3)"
    scen = rd.jsonl(rd.path("03_consistency_data", "scenarios", "scenarios.jsonl"))
    if not scen:
        return section("coverage", title, absent(rd, "03_consistency_data", "scenarios.jsonl"))
    g = dig(rd.config, "gates", "data") or {}
    min_prompts, min_ctx, min_pairs = (
        num(g.get("min_prompts_per_trait")) or 20,
        num(g.get("min_contexts_per_trait")) or 3,
        num(g.get("min_pairs_per_violated_trait")) or 20,
    )
    contexts = order({str(s.get("context", "?")) for s in scen}, CONTEXT_ORDER)
    cell: dict[tuple[str, str], int] = {}
    held: dict[str, int] = {}
    for s in scen:
        for t in as_list(s.get("targets")):
            cell[(str(t), str(s.get("context", "?")))] = cell.get((str(t), str(s.get("context", "?"))), 0) + 1
            held[str(t)] = held.get(str(t), 0) + (s.get("split") == "heldout")
    pairs = [
        p
        for split in ("train", "heldout")
        for p in rd.jsonl(rd.path("03_consistency_data", split, f"{split}/pairs.jsonl"))
    ]
    violated: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for p in pairs:
        for t in as_list(p.get("violated_traits")):
            violated[str(t)] = violated.get(str(t), 0) + 1
        kinds[str(p.get("rejected_kind", "?"))] = kinds.get(str(p.get("rejected_kind", "?")), 0) + 1
    rows_t = order({t for t, _ in cell} | set(violated), traits)
    top = max(cell.values(), default=0)
    rows = []
    for t in rows_t:
        counts = [cell.get((t, c), 0) for c in contexts]
        total, nctx = sum(counts), sum(1 for c in counts if c)
        okc = lambda ok: "#dafbe1" if ok else "#ffebe9"  # noqa: E731 - two-state colour for gate columns
        rows.append(
            [f"<code>{esc(t)}</code>"]
            + [f'<td class="num" style="background:{count_color(n, top)}">{n}</td>' for n in counts]
            + [
                f'<td class="num" style="background:{okc(total >= min_prompts)}">{total}</td>',
                f'<td class="num" style="background:{okc(nctx >= min_ctx)}">{nctx}</td>',
                f'<td class="num">{held.get(t, 0)}</td>',
                f'<td class="num" style="background:{okc(violated.get(t, 0) >= min_pairs)}">{violated.get(t, 0)}</td>',
            ]
        )
    per_ctx = [sum(1 for s in scen if str(s.get("context", "?")) == c) for c in contexts]
    rows.append(
        ["<i>all scenarios</i>"]
        + [f'<td class="num">{n}</td>' for n in per_ctx]
        + [
            f'<td class="num">{len(scen)}</td>',
            "",
            f'<td class="num">{sum(1 for s in scen if s.get("split") == "heldout")}</td>',
            f'<td class="num">{len(pairs)}</td>',
        ]
    )
    body = (
        f"<p>{len(scen)} scenarios; {len(pairs)} preference pairs"
        + (f" (rejected by kind: {esc(', '.join(f'{k} {v}' for k, v in sorted(kinds.items())))})" if kinds else "")
        + ". "
        f"Cells count the prompts that target a trait in a context; the gate asks every trait for ≥ {fmt(min_prompts)} prompts "
        f"in ≥ {fmt(min_ctx)} contexts and ≥ {fmt(min_pairs)} pairs that violate it.</p>"
    )
    body += table(["trait \\ context", *contexts, "prompts", "contexts", "held-out", "violated in pairs"], rows)
    card = rd.text(rd.path("03_consistency_data", "card", "README.md"))
    if card:
        body += f"<details><summary>dataset card (README.md)</summary><pre>{esc(card)}</pre></details>"
    return section("coverage", title, body)


def evaluation_section(rd: RunData, traits: list[str]) -> str:
    """Stage 4 (report.json): per-trait detector AUROC and adherence, adherence per context, and the overall figures
    of the held-out chosen responses beside the baseline's."""
    title = "Persona evaluation (stage 4)"
    rep = rd.typed(EvaluationReport, rd.path("04_evaluation", "report", "report.json"))
    if rep is None:
        return section("evaluation", title, absent(rd, "04_evaluation", "report.json"))
    g = dig(rd.config, "gates", "evaluation") or {}
    adh = rep.adherence or AdherenceFigures()
    names = order(set(rep.auroc) | set(adh.per_trait), traits)
    body = ""
    if names:
        thr = num(g.get("min_auroc")) or 0.9
        series = {
            "detector AUROC": [num(rep.auroc[t].auroc) if t in rep.auroc else None for t in names],
            "adherence (held-out chosen)": [num(figure_value(adh.per_trait.get(t))) for t in names],
        }
        body += "<h3>Per trait: detector AUROC and held-out adherence</h3>" + bar_chart(
            names, series, thresholds=[("gate", thr)], title="per-trait AUROC and adherence"
        )
    if adh.per_context:
        ctxs = order(set(adh.per_context), CONTEXT_ORDER)
        cell = {
            c: adh.per_context[c]
            if isinstance(adh.per_context[c], MeasurementRecord)
            else MeasurementRecord(value=adh.per_context[c])
            for c in ctxs
        }
        rows = [
            [
                esc(c),
                f'<td class="num" style="background:{heat_color(num(m.value))}">{esc(fmt(num(m.value)))}</td>',
                f'<td class="num">{esc(fmt(m.n))}</td>',
                f'<td class="num">{esc(ci_text(m.ci))}</td>',
            ]
            for c, m in cell.items()
        ]
        body += "<h3>Adherence per context (held-out chosen responses)</h3>" + table(
            ["context", "adherence", "n", "95% CI"], rows
        )
    bp = rep.baseline_persona or BaselinePersona()
    rows = []
    for label, a, b in (
        ("consistency rate", rep.consistency_rate, bp.consistency_rate),
        ("adherence", adh.overall, bp.adherence),
        ("style variance", rep.style_variance, bp.style_variance),
    ):
        rows.append(
            [
                esc(label),
                f'<td class="num">{esc(fmt(num(figure_value(a))))}</td>',
                f'<td class="num">{esc(fmt(num(figure_value(b))))}</td>',
            ]
        )
    body += "<h3>Overall</h3>" + table(
        ["metric", f"held-out chosen (n={fmt(rep.n_heldout)})", f"baseline model, no system prompt (n={fmt(bp.n)})"],
        rows,
    )
    return section("evaluation", title, body)
