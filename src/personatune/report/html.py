"""The self-contained HTML report of a run: `build_report(run_dir)` writes `<run>/report.html`.

The page is built from the run directory alone (JSON, JSONL and YAML files; no model is loaded)
and opens from disk with no network: CSS is inline, charts are inline SVG generated in Python,
and there is no JavaScript. Every section appears only when its artifacts exist; otherwise it
says which stage has not run yet. Every string read from a run file is HTML-escaped.

Sections, top to bottom:
    1. header: run name, model, persona, verdict with its reason (personatune.verdict, as `personatune run` decides
       it: the stopping stage and its gate values); the stage strip
    2. quality gates of every stage (value vs threshold, unit, n, CI, pass/fail, diagnosis)
    3. baseline (stage 1) and persona (stage 2)
    4. data coverage, trait x context (stage 3)
    5. persona evaluation (stage 4)
    6. training curves over steps (stage 5) and rounds (stage 6): drift KL and persona shift (nats/token)
    7. final evaluation: verdict banner with reasons, baseline vs final table (drift KL, persona shift),
       the context-distillation target (baseline with the persona prompt), capability per task, per-trait
       chart, per-context heatmap (stage 7)
    8. sample responses side by side (07_final_eval/samples.json): baseline without a system prompt, baseline
       with the persona prompt, final model without one; run files (config, log tail, unreadable files)

KL wording: files written since drift KL name their reference (`kl_reference`) and carry `persona_shift`;
their `kl` is shown as "drift KL". Older files' `kl` was measured against the unprompted baseline and is
shown as "KL to the unprompted baseline (run written before drift KL)", never as drift KL.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any, Sequence

from personatune.errors import RunDirError
from personatune.report.charts import bar_chart, count_color, heat_color, line_chart
from personatune.report.load import DRIFT_KL, KL_UNIT, OLD_KL, PERSONA_SHIFT, STAGE_TITLES, RunData, dig, kl_is_drift, load_run, num
from personatune.rundir import atomic_write_text

# Contexts in the order the prompt bank defines them (personatune.scenarios.CONTEXTS); others follow sorted.
CONTEXT_ORDER = ("casual", "technical", "emotional", "adversarial", "multi_turn", "off_topic")
SAMPLE_LIMIT = 24  # sample rows shown; a run can hold thousands and the page must stay light
LOG_TAIL = 40  # lines of log.txt shown
TABLE_LIMIT = 300  # rows of metrics.jsonl / rounds.jsonl listed under the charts (the charts use every row)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1120px;margin:0 auto;padding:0 18px 60px;color:#1f2328;line-height:1.45}
header{border-bottom:2px solid #d0d7de;padding:18px 0 10px;margin-bottom:8px}
h1{margin:0 0 6px;font-size:1.6em} h2{margin-top:34px;border-bottom:1px solid #d0d7de;padding-bottom:4px} h3{margin:20px 0 6px}
.meta span{margin-right:18px;color:#57606a} .meta b{color:#1f2328}
nav a{margin-right:12px;font-size:.92em} a{color:#0969da}
table{border-collapse:collapse;margin:8px 0 12px;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.pass td.res{background:#dafbe1} tr.fail td.res{background:#ffebe9} tr.inc td.res{background:#fff8c5}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:.85em;font-weight:600;color:#fff}
.b-pass{background:#1a7f37} .b-fail{background:#cf222e} .b-inc{background:#bf8700} .b-run{background:#9a6700} .b-none{background:#8c959f}
.verdict{font-size:1.15em;padding:3px 14px}
.verdict-line{margin:4px 0 2px;font-size:1.02em} .verdict-line.v-fail b{color:#cf222e} .verdict-line.v-pass b{color:#1a7f37}
.note{color:#57606a;font-style:italic;margin:6px 0}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:6px}
.strip{display:flex;gap:6px;flex-wrap:wrap;margin:10px 0}
.strip div{flex:1 1 130px;border-radius:6px;padding:6px 8px;font-size:.85em;border:1px solid #d0d7de}
.strip .s-pass{background:#dafbe1} .strip .s-fail{background:#ffebe9} .strip .s-inc{background:#fff8c5} .strip .s-run{background:#fff8c5} .strip .s-none{background:#f6f8fa;color:#57606a}
table.samples{table-layout:fixed;width:100%} table.samples td{white-space:pre-wrap;word-wrap:break-word}
pre{white-space:pre-wrap;word-wrap:break-word;background:#f6f8fa;padding:8px 10px;border-radius:6px;max-height:420px;overflow:auto;font-size:.85em}
svg.chart{max-width:100%;height:auto;display:block;margin:6px 0}
.banner{border-radius:8px;padding:10px 14px;margin:10px 0;border:2px solid} .banner b{font-size:1.3em}
.banner-pass{background:#dafbe1;border-color:#1a7f37} .banner-fail{background:#ffebe9;border-color:#cf222e}
ul.diag li{margin:2px 0} details{margin:8px 0} summary{cursor:pointer;color:#0969da}
footer{margin-top:40px;color:#57606a;font-size:.85em}
"""


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
    """"lo..hi" for a 2-element interval, "—" otherwise."""
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


def _list(x: Any) -> list[Any]:
    """`x` when it is a list, else [] (a string must not be iterated letter by letter)."""
    return x if isinstance(x, list) else []


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
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


def _kv_table(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"<p>{esc(fmt(obj))}</p>"
    rows = []
    for k, v in _kv(obj):
        if isinstance(v, dict) and "value" in v:
            v = f"{fmt(num(v))} (n={fmt(v.get('n'))}, 95% CI {ci_text(v.get('ci'))})"
        rows.append([esc(k), f'<td class="num">{esc(fmt(v))}</td>'])
    return _table(["key", "value"], rows)


def _badge(status: str | None, gated: bool = False) -> str:
    cls, label = {
        "done": ("b-pass", "passed" if gated else "done"), "gate_failed": ("b-fail", "gate failed"), "failed": ("b-fail", "error"),
        "gate_inconclusive": ("b-inc", "gate inconclusive"),
        "running": ("b-run", "running / stopped"), "interrupted": ("b-run", "interrupted"),
    }.get(status or "", ("b-none", "not run yet"))
    return f'<span class="badge {cls}">{esc(label)}</span>'


def _absent(rd: RunData, stage: str, what: str) -> str:
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


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if num(t) is not None else "—"


# --- sections ---------------------------------------------------------------------------------
def _strip(rd: RunData) -> str:
    parts = []
    for sid in rd.stage_ids:
        rec = rd.record(sid)
        st = rd.status(sid)
        cls = {"done": "s-pass", "gate_failed": "s-fail", "gate_inconclusive": "s-inc", "failed": "s-fail", "running": "s-run",
               "interrupted": "s-run"}.get(st or "", "s-none")
        secs = f" · {num(rec.get('seconds')):.1f}s" if num(rec.get("seconds")) is not None else ""
        parts.append(f'<div class="{cls}"><b>{esc(sid)}</b><br>{esc(STAGE_TITLES.get(sid, sid))}<br>{_badge(st, bool(rec.get("gate")))}{esc(secs)}</div>')
    return f'<div class="strip">{"".join(parts)}</div>'


def _gate_table(results: list[Any]) -> str:
    rows = []
    for r in results:
        if not isinstance(r, dict):
            continue
        ok = r.get("passed")
        state = "inc" if r.get("status") == "inconclusive" else ("pass" if ok else "fail")
        res = f'<td class="res">{ {"pass": "PASS", "fail": "FAIL", "inc": "INCONCLUSIVE"}[state]}</td>'
        thr = f"{r.get('direction', '')} {fmt(r.get('threshold'))}"
        note = " ".join(x for x in (str(r.get("description") or ""), str(r.get("note") or "")) if x)
        rows.append((state, [esc(r.get("metric", "?")), f'<td class="num">{esc(fmt(r.get("value")))}</td>', f'<td class="num">{esc(thr)}</td>',
                          esc(r.get("unit", "")), f'<td class="num">{esc(fmt(r.get("n")))}</td>', f'<td class="num">{esc(ci_text(r.get("ci")))}</td>', res, esc(note)]))
    head = "".join(f"<th>{h}</th>" for h in ("metric", "value", "threshold", "unit", "n", "95% CI", "result", "what / note"))
    body = "".join(f'<tr class="{state}">' + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>" for state, cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _gates(rd: RunData) -> str:
    out = []
    for sid in rd.stage_ids:
        rec = rd.record(sid)
        gate = rd.json(rd.root / sid / "gate.json")
        if not isinstance(gate, dict):
            gate = rec.get("gate") if isinstance(rec.get("gate"), dict) else None
        head = f"<h3>{esc(sid)} — {esc(STAGE_TITLES.get(sid, sid))} {_badge(rd.status(sid), gate is not None)}</h3>"
        info = []
        if rec.get("seconds") is not None:
            info.append(f"ran {fmt(rec.get('seconds'))} s, finished {_when(rec.get('finished'))}")
        if rec.get("message"):
            info.append(str(rec["message"]))
        body = "".join(f'<p class="note">{esc(i)}</p>' for i in info)
        if rec.get("error"):
            body += f'<p class="warn">error: {esc(rec["error"])}</p>'
        if gate is None:
            body += '<p class="note">no gate result.</p>' if rec else _absent(rd, sid, "gate result")
        else:
            body += _gate_table(_list(gate.get("results")))
            diag = [("cause", d) for d in _list(gate.get("diagnosis"))] + [("fix", s) for s in _list(gate.get("next_steps"))]
            if diag:
                body += '<ul class="diag">' + "".join(f"<li><b>{k}:</b> {esc(v)}</li>" for k, v in diag) + "</ul>"
        out.append(head + body)
    return _section("gates", "Quality gates", "".join(out))


def _baseline(rd: RunData) -> str:
    b = rd.json(rd.path("01_baseline", "baseline", "baseline.json"))
    if not isinstance(b, dict):
        return _section("baseline", "Baseline model (stage 1)", _absent(rd, "01_baseline", "baseline.json"))
    rows = [[esc(k), f'<td class="num">{esc(fmt(b.get(k)))}</td>'] for k in ("model", "path", "parameters", "load_seconds", "sft_rows", "chat_template") if k in b]
    body = _table(["field", "value"], rows)
    if b.get("sanity_prompt") or b.get("sanity_reply"):
        body += _table(["sanity prompt", "reply"], [[esc(b.get("sanity_prompt", "")), f'<td style="white-space:pre-wrap">{esc(b.get("sanity_reply", ""))}</td>']])
    cap = b.get("capability") if isinstance(b.get("capability"), dict) else {}
    tasks = cap.get("tasks") if isinstance(cap.get("tasks"), dict) else {}
    if cap:
        body += f"<h3>Capability suite: score {esc(fmt(num(cap.get('score'))))} (n={esc(fmt(cap.get('n')))})</h3>"
        if tasks:
            body += _table(["task", "accuracy"], [[esc(t), f'<td class="num">{esc(fmt(num(v)))}</td>'] for t, v in tasks.items()])
    if isinstance(b.get("perplexity"), dict):
        body += "<h3>Held-out perplexity</h3>" + _kv_table(b["perplexity"])
    return _section("baseline", "Baseline model (stage 1)", body)


def _persona_doc(rd: RunData) -> dict[str, Any] | None:
    p = rd.path("02_persona", "persona", "persona.yaml")
    if not p.is_file():
        cands = sorted((rd.root / "02_persona").glob("*.y*ml")) if (rd.root / "02_persona").is_dir() else []
        p = cands[0] if cands else p
    doc = rd.yaml(p)
    return doc if isinstance(doc, dict) else None


def _persona(rd: RunData, doc: dict[str, Any] | None) -> str:
    if doc is None:
        return _section("persona", "Persona (stage 2)", _absent(rd, "02_persona", "persona file"))
    body = f"<p><b>{esc(doc.get('name', '?'))}</b> — {esc(doc.get('summary', ''))}</p>"
    traits = [t for t in _list(doc.get("traits")) if isinstance(t, dict)]
    if traits:
        body += _table(["trait", "description", "positive", "negative"],
                       [[f"<code>{esc(t.get('id', '?'))}</code>", esc(t.get("description", "")),
                         f'<td class="num">{len(_list(t.get("positive")))}</td>', f'<td class="num">{len(_list(t.get("negative")))}</td>'] for t in traits])
    if isinstance(doc.get("style"), dict):
        body += "<h3>Style</h3>" + _kv_table(doc["style"])
    return _section("persona", "Persona (stage 2)", body)


def _order(keys: set[str], preferred: Sequence[str]) -> list[str]:
    return [k for k in preferred if k in keys] + sorted(keys - set(preferred))


def _coverage(rd: RunData, traits: list[str]) -> str:
    title = "Data coverage (stage 3)"
    scen = rd.jsonl(rd.path("03_consistency_data", "scenarios", "scenarios.jsonl"))
    if not scen:
        return _section("coverage", title, _absent(rd, "03_consistency_data", "scenarios.jsonl"))
    g = dig(rd.config, "gates", "data") or {}
    min_prompts, min_ctx, min_pairs = (num(g.get("min_prompts_per_trait")) or 20, num(g.get("min_contexts_per_trait")) or 3,
                                       num(g.get("min_pairs_per_violated_trait")) or 20)
    contexts = _order({str(s.get("context", "?")) for s in scen}, CONTEXT_ORDER)
    cell: dict[tuple[str, str], int] = {}
    held: dict[str, int] = {}
    for s in scen:
        for t in _list(s.get("targets")):
            cell[(str(t), str(s.get("context", "?")))] = cell.get((str(t), str(s.get("context", "?"))), 0) + 1
            held[str(t)] = held.get(str(t), 0) + (s.get("split") == "heldout")
    pairs = [p for split in ("train", "heldout") for p in rd.jsonl(rd.path("03_consistency_data", split, f"{split}/pairs.jsonl"))]
    violated: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for p in pairs:
        for t in _list(p.get("violated_traits")):
            violated[str(t)] = violated.get(str(t), 0) + 1
        kinds[str(p.get("rejected_kind", "?"))] = kinds.get(str(p.get("rejected_kind", "?")), 0) + 1
    rows_t = _order({t for t, _ in cell} | set(violated), traits)
    top = max(cell.values(), default=0)
    rows = []
    for t in rows_t:
        counts = [cell.get((t, c), 0) for c in contexts]
        total, nctx = sum(counts), sum(1 for c in counts if c)
        okc = lambda ok: "#dafbe1" if ok else "#ffebe9"  # noqa: E731 - two-state colour for gate columns
        rows.append([f"<code>{esc(t)}</code>"] + [f'<td class="num" style="background:{count_color(n, top)}">{n}</td>' for n in counts] + [
            f'<td class="num" style="background:{okc(total >= min_prompts)}">{total}</td>', f'<td class="num" style="background:{okc(nctx >= min_ctx)}">{nctx}</td>',
            f'<td class="num">{held.get(t, 0)}</td>',
            f'<td class="num" style="background:{okc(violated.get(t, 0) >= min_pairs)}">{violated.get(t, 0)}</td>'])
    per_ctx = [sum(1 for s in scen if str(s.get("context", "?")) == c) for c in contexts]
    rows.append(["<i>all scenarios</i>"] + [f'<td class="num">{n}</td>' for n in per_ctx] + [f'<td class="num">{len(scen)}</td>', "", 
                f'<td class="num">{sum(1 for s in scen if s.get("split") == "heldout")}</td>', f'<td class="num">{len(pairs)}</td>'])
    body = (f"<p>{len(scen)} scenarios; {len(pairs)} preference pairs"
            + (f" (rejected by kind: {esc(', '.join(f'{k} {v}' for k, v in sorted(kinds.items())))})" if kinds else "") + ". "
            f"Cells count the prompts that target a trait in a context; the gate asks every trait for ≥ {fmt(min_prompts)} prompts "
            f"in ≥ {fmt(min_ctx)} contexts and ≥ {fmt(min_pairs)} pairs that violate it.</p>")
    body += _table(["trait \\ context", *contexts, "prompts", "contexts", "held-out", "violated in pairs"], rows)
    card = rd.text(rd.path("03_consistency_data", "card", "README.md"))
    if card:
        body += f"<details><summary>dataset card (README.md)</summary><pre>{esc(card)}</pre></details>"
    return _section("coverage", title, body)


def _heat_table(row_names: list[str], col_names: list[str], value: dict[tuple[str, str], float | None], *, corner: str) -> str:
    vals = [v for v in value.values() if v is not None]
    lo, hi = (0.0, 1.0) if all(0 <= v <= 1 for v in vals) else (min(vals, default=0.0), max(vals, default=1.0))
    rows = [[esc(r)] + [f'<td class="num" style="background:{heat_color(value.get((r, c)), lo, hi)}">{esc(fmt(value.get((r, c))))}</td>' for c in col_names]
            for r in row_names]
    return _table([corner, *col_names], rows)


def _evaluation(rd: RunData, traits: list[str]) -> str:
    title = "Persona evaluation (stage 4)"
    rep = rd.json(rd.path("04_evaluation", "report", "report.json"))
    if not isinstance(rep, dict):
        return _section("evaluation", title, _absent(rd, "04_evaluation", "report.json"))
    g = dig(rd.config, "gates", "evaluation") or {}
    auroc = rep.get("auroc") if isinstance(rep.get("auroc"), dict) else {}
    per_trait = dig(rep, "adherence", "per_trait") or {}
    names = _order(set(auroc) | set(per_trait), traits)
    body = ""
    if names:
        thr = num(g.get("min_auroc")) or 0.9
        body += "<h3>Per trait: detector AUROC and held-out adherence</h3>" + bar_chart(
            names, {"detector AUROC": [num(dig(auroc, t, "auroc")) for t in names], "adherence (held-out chosen)": [num(per_trait.get(t)) for t in names]},
            thresholds=[("gate", thr)], title="per-trait AUROC and adherence")
    per_ctx = dig(rep, "adherence", "per_context") or {}
    if isinstance(per_ctx, dict) and per_ctx:
        ctxs = _order(set(per_ctx), CONTEXT_ORDER)
        rows = [[esc(c), f'<td class="num" style="background:{heat_color(num(per_ctx[c]))}">{esc(fmt(num(per_ctx[c])))}</td>',
                 f'<td class="num">{esc(fmt(dig(per_ctx, c, "n")))}</td>', f'<td class="num">{esc(ci_text(dig(per_ctx, c, "ci")))}</td>'] for c in ctxs]
        body += "<h3>Adherence per context (held-out chosen responses)</h3>" + _table(["context", "adherence", "n", "95% CI"], rows)
    bp = rep.get("baseline_persona") if isinstance(rep.get("baseline_persona"), dict) else {}
    rows = []
    for label, a, b in (("consistency rate", rep.get("consistency_rate"), bp.get("consistency_rate")),
                        ("adherence", dig(rep, "adherence", "overall"), bp.get("adherence")),
                        ("style variance", rep.get("style_variance"), bp.get("style_variance"))):
        rows.append([esc(label), f'<td class="num">{esc(fmt(num(a)))}</td>', f'<td class="num">{esc(fmt(num(b)))}</td>'])
    body += ("<h3>Overall</h3>" + _table(["metric", f"held-out chosen (n={fmt(rep.get('n_heldout'))})", f"baseline model, no system prompt (n={fmt(bp.get('n'))})"], rows))
    return _section("evaluation", title, body)


def kl_header(rows: list[dict[str, Any]]) -> str:
    """The name of the `kl` column of metrics rows, with its unit: drift KL, or the old KL to the unprompted baseline."""
    kinds = {kl_is_drift(r) for r in rows if num(r.get("kl")) is not None} or {True}
    if kinds == {True}:
        return f"{DRIFT_KL} ({KL_UNIT})"
    if kinds == {False}:
        return f"{OLD_KL} ({KL_UNIT})"
    return f"KL ({KL_UNIT}): {DRIFT_KL} in rows with kl_reference, else to the unprompted baseline (written before drift KL)"


COLUMN_NAMES = {"kl_stderr": f"KL standard error ({KL_UNIT})", "persona_shift": f"{PERSONA_SHIFT} ({KL_UNIT})",
                "persona_shift_stderr": f"{PERSONA_SHIFT} standard error ({KL_UNIT})", "kl_reference": "KL reference"}


def _kl_charts(rows: list[dict[str, Any]], x_key: str, x_label: str, budget: float) -> str:
    """Drift KL (with the budget) and persona shift per step or round, each with its ± one standard-error band; the
    `kl` of rows written before drift KL is drawn as its own series, labelled as KL to the unprompted baseline."""
    def series(keep: Any, key: str, se_key: str) -> tuple[list[tuple[float, float | None]], list[tuple[float, float, float]]]:
        sel = [r for r in rows if keep(r) and num(r.get(key)) is not None]
        pts = [(num(r[x_key]), num(r[key])) for r in sel]
        band = [(num(r[x_key]), num(r[key]) - num(r[se_key]), num(r[key]) + num(r[se_key])) for r in sel if num(r.get(se_key)) is not None]
        return pts, band  # type: ignore[return-value]

    lines: dict[str, Any] = {}
    bands: dict[str, Any] = {}
    for name, keep, key, se in ((DRIFT_KL, kl_is_drift, "kl", "kl_stderr"), (PERSONA_SHIFT, lambda r: True, "persona_shift", "persona_shift_stderr"),
                                (OLD_KL, lambda r: not kl_is_drift(r), "kl", "kl_stderr")):
        pts, band = series(keep, key, se)
        if pts:
            lines[name], bands[name] = pts, band
    if not lines:
        return ""
    notes = []
    if DRIFT_KL in lines:
        notes.append(f"{DRIFT_KL} = KL(policy(·|x) ‖ baseline(·|persona context, x)) in {KL_UNIT}, gated by the budget line")
    if PERSONA_SHIFT in lines:
        notes.append(f"{PERSONA_SHIFT} = KL(policy(·|x) ‖ baseline(·|x)) in {KL_UNIT}, information, not a gate")
    if OLD_KL in lines:
        notes.append(f"{OLD_KL}: KL(policy ‖ baseline without the persona context) in {KL_UNIT}; not comparable with the budget of drift KL")
    what = " and ".join(n for n in (DRIFT_KL, PERSONA_SHIFT, OLD_KL) if n in lines)
    return (line_chart(lines, x_label=x_label, y_label=f"KL ({KL_UNIT})", bands=bands, thresholds=[("budget", budget)],
                       title=f"{what} per {x_label} ({KL_UNIT})")
            + f'<p class="note">{esc("; ".join(notes))}. Bands: ± one standard error.</p>')


def _curves_for(rows: list[dict[str, Any]], x_key: str, x_label: str, rd: RunData) -> str:
    """KL, persona-quality and style-variance charts for metrics rows keyed by step or round."""
    g = dig(rd.config, "gates", "optimization") or {}
    rows = [r for r in rows if num(r.get(x_key)) is not None]
    if not rows:
        return f'<p class="note">no rows with a numeric {esc(x_key)!s}.</p>'
    pts = lambda k: [(num(r[x_key]), num(r.get(k))) for r in rows]  # noqa: E731 - one-line accessor
    has = lambda k: any(num(r.get(k)) is not None for r in rows)  # noqa: E731
    out = _kl_charts(rows, x_key, x_label, num(g.get("max_kl")) or 0.1)
    quality = {k: pts(k) for k in ("consistency", "adherence", "reward") if has(k)}
    if quality:
        ys = [y for s in quality.values() for _, y in s if y is not None]
        # Stage 6 records the consistency rate's Wilson interval per round: drawn as a band.
        cband = [(num(r[x_key]), num(r["consistency_ci"][0]), num(r["consistency_ci"][1])) for r in rows
                 if isinstance(r.get("consistency_ci"), list) and len(r["consistency_ci"]) == 2 and all(num(c) is not None for c in r["consistency_ci"])]
        out += line_chart(quality, x_label=x_label, y_label="fraction / reward", y_range=(0.0, 1.0) if all(0 <= y <= 1 for y in ys) else None,
                          thresholds=[(n, t) for n, t in (("consistency", num(g.get("consistency")) or 0.85), ("adherence", num(g.get("adherence")) or 0.9)) if n in quality],
                          bands={"consistency": cband} if cband else None, title=f"persona metrics per {x_label}")
    if has("style_variance"):
        out += line_chart({"style variance": pts("style_variance")}, x_label=x_label, y_label="style variance",
                          thresholds=[("gate", num(g.get("max_style_variance")) or 0.15)], title=f"style variance per {x_label}")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cols = [k for k in keys if all(not isinstance(r.get(k), (dict, list)) for r in rows)]
    shown = rows[-TABLE_LIMIT:]
    what = f"all {len(rows)} rows" if len(shown) == len(rows) else f"last {len(shown)} of {len(rows)} rows"
    names = {**COLUMN_NAMES, "kl": kl_header(rows)}
    out += (f"<details><summary>{what}</summary>"
            + _table([names.get(c, c) for c in cols], [[f'<td class="num">{esc(fmt(r.get(c)))}</td>' for c in cols] for r in shown]) + "</details>")
    return out


def _rounds_table(rounds: list[dict[str, Any]]) -> str:
    """Stage 6's rounds (rounds.jsonl): one row per round, the kept one marked."""
    rows = [r for r in rounds if num(r.get("round")) is not None]
    if not rows:
        return ""
    kept = [r for r in rows if r.get("kept") is True]
    shift = any(num(r.get("persona_shift")) is not None for r in rows)
    head = ["round", kl_header(rows)] + ([f"{PERSONA_SHIFT} ({KL_UNIT})"] if shift else []) + [
        "consistency [95% CI]", "adherence", "style variance", "pairs", "steps", "gate", "kept", "seconds"]
    body = []
    pm = lambda r, k: fmt(num(r.get(k))) + (f" ± {fmt(num(r.get(k + '_stderr')))}" if num(r.get(k + "_stderr")) is not None else "")  # noqa: E731
    for r in rows:
        cons = fmt(num(r.get("consistency"))) + (f" [{ci_text(r.get('consistency_ci'))}]" if ci_text(r.get("consistency_ci")) != "—" else "")
        gate = r.get("passed")
        gcell = '<td class="res">—</td>' if not isinstance(gate, bool) else f'<td class="res">{"PASS" if gate else "FAIL"}</td>'
        cells = [f'<td class="num">{esc(fmt(r.get("round")))}</td>', f'<td class="num">{esc(pm(r, "kl"))}</td>']
        cells += [f'<td class="num">{esc(pm(r, "persona_shift"))}</td>'] if shift else []
        cells += [f'<td class="num">{esc(cons)}</td>']
        cells += [f'<td class="num">{esc(fmt(num(r.get(k))))}</td>' for k in ("adherence", "style_variance", "pairs", "steps")]
        cells += [gcell, f"<td>{'<b>kept</b>' if r.get('kept') is True else ''}</td>", f'<td class="num">{esc(fmt(num(r.get("seconds"))))}</td>']
        cls = "pass" if gate is True else "fail" if gate is False else ""
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    note = (f"Kept: round {esc(fmt(kept[-1].get('round')))} (the best round whose stage-5 gate passed)." if kept
            else "No round is marked kept.")
    return (f'<p class="note">{note}</p><table><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")


def _curves(rd: RunData) -> str:
    steps = rd.jsonl(rd.path("05_optimization", "metrics", "metrics.jsonl"))
    rounds = rd.jsonl(rd.path("06_iterations", "rounds", "rounds.jsonl"))
    body = "<h3>Optimization: evaluation steps (stage 5)</h3>"
    body += _curves_for(steps, "step", "step", rd) if steps else _absent(rd, "05_optimization", "metrics.jsonl")
    body += "<h3>Iterative rounds (stage 6)</h3>"
    body += (_rounds_table(rounds) + _curves_for(rounds, "round", "round", rd)) if rounds else _absent(rd, "06_iterations", "rounds.jsonl")
    return _section("curves", "Training curves (stages 5-6)", body)


def _mcell(m: Any, digits: int = 3) -> str:
    """A measurement dict (or bare number) as a table cell: value and, when known, its 95% interval."""
    v = num(m)
    if v is None:
        return '<td class="num">—</td>'
    ci = ci_text(m.get("ci")) if isinstance(m, dict) else "—"
    return f'<td class="num">{v:.{digits}f}' + (f' <span class="note">[{esc(ci)}]</span>' if ci != "—" else "") + "</td>"


def _verdict_banner(final: dict[str, Any]) -> str:
    verdict = final.get("verdict")
    if verdict not in ("DEPLOY", "NO-DEPLOY"):
        return '<p class="note">final.json holds no verdict.</p>'
    reasons = [str(r) for r in _list(final.get("reasons"))] or ([final["reasons"]] if isinstance(final.get("reasons"), str) else [])
    cls = "banner-pass" if verdict == "DEPLOY" else "banner-fail"
    what = "every stage-7 gate passed" if verdict == "DEPLOY" else "why"
    items = "".join(f"<li>{esc(r)}</li>" for r in reasons)
    return f'<div class="banner {cls}"><b>{esc(verdict)}</b> — {what}{"<ul>" + items + "</ul>" if items else ""}</div>'


def _drop_table(title: str, tasks: dict[str, dict[str, Any]], keys: tuple[str, ...], metric: bool = False) -> str:
    """A per-task regression table: baseline, final, drop, allowed drop, n and ok/DROP (capability suite, lm-eval tasks)."""
    rows = []
    for t, d in tasks.items():
        ok = d.get("ok")
        res = '<td class="res">—</td>' if not isinstance(ok, bool) else f'<td class="res">{"ok" if ok else "DROP"}</td>'
        rows.append(f'<tr class="{"pass" if ok is True else "fail" if ok is False else ""}"><td>{esc(str(t))}</td>'
                    + (f'<td>{esc(str(d.get("metric", "")))}</td>' if metric else "")
                    + "".join(f'<td class="num">{esc(fmt(num(d.get(k))))}</td>' for k in keys) + res + "</tr>")
    head = "<th>task</th>" + ("<th>metric</th>" if metric else "") + "<th>baseline</th><th>final</th><th>drop</th><th>allowed drop</th><th>n</th><th>result</th>"
    return f"<h3>{esc(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def _distillation_target(final: dict[str, Any]) -> str:
    """Baseline without a system prompt | baseline with the persona prompt | final without one: how close the final
    model came to the context-distillation target (final.json `prompted_baseline`); empty for runs without it."""
    pb = final.get("prompted_baseline")
    if not isinstance(pb, dict):
        return ""
    rows = [("consistency rate", dig(final, "consistency", "baseline"), pb.get("consistency"), dig(final, "consistency", "final")),
            ("on-task rate", dig(final, "on_task", "baseline"), pb.get("on_task"), dig(final, "on_task", "final")),
            ("trait adherence", dig(final, "adherence", "baseline"), pb.get("adherence"), dig(final, "adherence", "final"))]
    trs = "".join(f"<tr><td>{esc(label)}</td>{_mcell(b)}{_mcell(p)}{_mcell(f)}</tr>" for label, b, p, f in rows)
    gap = num(pb.get("gap_closed"))
    note = (f"The persona-prompted baseline ({fmt(pb.get('context'))}) is the target of context distillation and the reference of drift KL; "
            f"same {fmt(pb.get('n'))} prompts, decoding and evaluator. "
            + (f"Share of the consistency gap the final model closed: {gap:.3f} ((final − baseline) / (prompted − baseline))." if gap is not None
               else "The persona prompt did not raise the baseline's consistency, so there is no gap to close."))
    return ("<h3>Context-distillation target: the baseline with the persona prompt</h3>"
            "<table><thead><tr><th>metric</th><th>baseline, no system prompt</th><th>baseline with the persona prompt</th>"
            f"<th>final, no system prompt</th></tr></thead><tbody>{trs}</tbody></table>"
            f'<p class="note">{esc(note)}</p>')


def _final(rd: RunData, final: dict[str, Any] | None, traits: list[str]) -> str:
    title = "Final evaluation (stage 7)"
    if final is None:
        return _section("final", title, _absent(rd, "07_final_eval", "final.json"))
    body = _verdict_banner(final)
    gates = {str(g.get("metric")): g.get("passed") for g in _list(final.get("gates")) if isinstance(g, dict)}
    undecided = {str(g.get("metric")) for g in _list(final.get("gates")) if isinstance(g, dict) and g.get("status") == "inconclusive"}
    gcell = lambda k: ('<td class="res">—</td>' if not isinstance(gates.get(k), bool)  # noqa: E731
                       else '<td class="res">INCONCLUSIVE</td>' if k in undecided else f'<td class="res">{"PASS" if gates[k] else "FAIL"}</td>')
    imp = final.get("improvement") if isinstance(final.get("improvement"), dict) else {}
    ret = final.get("retention") if isinstance(final.get("retention"), dict) else {}
    rob = final.get("robustness") if isinstance(final.get("robustness"), dict) else {}
    kl = final.get("kl") if isinstance(final.get("kl"), dict) else {}
    bf = lambda k: (dig(final, k, "baseline"), dig(final, k, "final"))  # noqa: E731
    rows = []
    imp_txt = (f"improvement {fmt(num(imp))} (95% CI {ci_text(imp.get('ci'))}; {fmt(imp.get('method'))})" if num(imp) is not None else "")
    rows.append(["consistency rate", *bf("consistency"), imp_txt, gcell("persona_improvement_ci_low")])
    rows.append(["trait adherence", *bf("adherence"), "", '<td class="res">—</td>'])
    rows.append(["style variance", *bf("style_variance"), "", '<td class="res">—</td>'])
    rows.append(["capability suite score", ret.get("baseline_score"), ret.get("final_score"),
                 f"retention {fmt(num(ret.get('value')))} (n={fmt(ret.get('n_items'))} items)" if ret else "", gcell("capability_retention")])
    ot_ret = dig(final, "on_task", "retention")
    ot_txt = f"retention {fmt(num(ot_ret))} (95% CI {ci_text(ot_ret.get('ci'))}) {fmt(ot_ret.get('note') or '')}" if isinstance(ot_ret, dict) else ""
    rows.append(["on-task rate (answers the request)", *bf("on_task"), ot_txt, gcell("on_task_retention")])
    rows.append(["perplexity (general text)", dig(final, "perplexity", "baseline", "perplexity"), dig(final, "perplexity", "final", "perplexity"), "", '<td class="res">—</td>'])
    rows.append([f"robustness: {fmt(rob.get('context') or 'adversarial')} prompts answered in persona (n={fmt(rob.get('n'))})", rob.get("before"), rob.get("after"),
                 "reported, not gated", '<td class="res">—</td>'])
    kl_txt = lambda d: (f"{fmt(num(d.get('kl_per_token')))} ± {fmt(num(d.get('kl_per_token_stderr')))} {KL_UNIT} over {fmt(d.get('tokens'))} tokens"  # noqa: E731
                        if isinstance(d, dict) and num(d.get("kl_per_token")) is not None else "")
    if kl_is_drift(final):
        shift = final.get("persona_shift") if isinstance(final.get("persona_shift"), dict) else {}
        rows.append([f"{DRIFT_KL}: KL(final ‖ baseline given the persona context), {KL_UNIT}", None, None,
                     kl_txt(kl) + ("; reported here, gated in stages 5-6" if kl_txt(kl) else ""), '<td class="res">—</td>'])
        rows.append([f"{PERSONA_SHIFT}: KL(final ‖ baseline without it), {KL_UNIT}", None, None,
                     kl_txt(shift) + ("; information, not a gate" if kl_txt(shift) else ""), '<td class="res">—</td>'])
    else:
        rows.append([f"{OLD_KL}: KL(final ‖ baseline), {KL_UNIT}", None, None, kl_txt(kl), '<td class="res">—</td>'])
    trs = []
    for label, b, f, fig, g in rows:
        cls = "pass" if "PASS" in g else "fail" if "FAIL" in g else "inc" if "INCONCLUSIVE" in g else ""
        trs.append(f'<tr class="{cls}"><td>{esc(label)}</td>{_mcell(b)}{_mcell(f)}<td>{esc(fig)}</td>{g}</tr>')
    n = final.get("n_prompts")
    body += (f'<h3>Baseline vs final ({esc(fmt(n))} held-out prompts, no system prompt, the same decoding)</h3>'
             '<table><thead><tr><th>metric</th><th>baseline</th><th>final</th><th>figure</th><th>gate</th></tr></thead><tbody>'
             + "".join(trs) + "</tbody></table>")
    body += _distillation_target(final)
    tasks = ret.get("tasks") if isinstance(ret.get("tasks"), dict) else {}
    tasks = {t: d for t, d in tasks.items() if isinstance(d, dict)}
    if tasks:
        body += _drop_table("Capability per task", tasks, ("baseline", "candidate", "drop", "allowed", "n"))
        body += f'<p class="note">{esc(ret.get("task_rule") or "allowed drop: the baseline accuracy minus its Wilson 95% lower bound")}.</p>'
    lm = final.get("lm_eval") if isinstance(final.get("lm_eval"), dict) else {}
    lm_tasks = {t: d for t, d in (lm.get("tasks") or {}).items() if isinstance(d, dict)} if isinstance(lm.get("tasks"), dict) else {}
    lm_skipped = lm.get("not_compared") if isinstance(lm.get("not_compared"), dict) else {}
    if lm_tasks or lm_skipped:
        body += (_drop_table("lm-evaluation-harness tasks", lm_tasks, ("baseline", "final", "drop", "allowed", "n"), metric=True)
                 + "".join(f'<p class="note">{esc(str(t))}: not compared ({esc(str(why))}).</p>' for t, why in lm_skipped.items())
                 + f'<p class="note">{esc(str(lm.get("rule") or ""))}.</p>')
    pt = final.get("per_trait") if isinstance(final.get("per_trait"), dict) else {}
    if pt:
        names = _order(set(pt), traits)
        body += "<h3>Adherence per trait, baseline vs final</h3>" + bar_chart(
            names, {"baseline": [num(dig(pt, t, "baseline")) for t in names], "final": [num(dig(pt, t, "final")) for t in names]},
            title="baseline vs final adherence per trait")
    pc = final.get("per_context") if isinstance(final.get("per_context"), dict) else {}
    pc = {c: v for c, v in pc.items() if isinstance(v, dict)}
    if pc:
        ctxs = _order(set(pc), CONTEXT_ORDER)
        cols = [("consistency", "baseline"), ("consistency", "final"), ("adherence", "baseline"), ("adherence", "final")]
        if any(isinstance(v.get("consistency"), dict) or isinstance(v.get("adherence"), dict) for v in pc.values()):
            value = {(c, f"{m} {w}"): num(dig(pc[c], m, w)) for c in ctxs for m, w in cols}
            names = [f"{m} {w}" for m, w in cols]
        else:  # a flat {"baseline": x, "final": y} per context
            names = ["baseline", "final"]
            value = {(c, k): num(pc[c].get(k)) for c in ctxs for k in names}
        body += ("<h3>Per context, baseline vs final</h3>" + _heat_table(ctxs, names, value, corner="context")
                 + '<p class="note">Colour runs from red (0) through amber (0.5) to green (1).</p>')
    earlier = final.get("earlier_gates") if isinstance(final.get("earlier_gates"), dict) else {}
    if earlier:
        items = [f"{esc(s)}: {esc(fmt(dig(earlier, s, 'status')))}, gate "
                 f"{esc({True: 'passed', False: 'FAILED', None: 'n/a'}.get(dig(earlier, s, 'gate_passed'), 'n/a'))}" for s in earlier]
        body += "<details><summary>earlier stages, as the manifest recorded them</summary><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul></details>"
    return _section("final", title, body)


def _score(x: Any) -> str:
    v = num(x)
    return "" if v is None else f"\n[consistency {v:.2f}]"


def _samples(rd: RunData, final: dict[str, Any] | None) -> str:
    title = "Sample responses"
    samples = [s for s in _list(rd.json(rd.path("07_final_eval", "samples", "samples.json"))) if isinstance(s, dict)]
    reply = lambda s, k: esc(as_text(s.get(k)) + _score(s.get(f"{k}_consistency")))  # noqa: E731
    if samples and any("baseline_prompted" in s for s in samples):
        rows = [[esc(s.get("context", "")), esc(as_text(s.get("prompt"))), reply(s, "baseline"),
                 reply(s, "baseline_prompted") if "baseline_prompted" in s else '<td class="note">not sampled</td>', reply(s, "final")]
                for s in samples[:SAMPLE_LIMIT]]
        note = ("The same held-out prompts, the same decoding: the baseline without a system prompt, the baseline given the persona prompt "
                "(the context-distillation target) and the final model without a system prompt; the evaluator's consistency score below each reply.")
        head = ["context", "prompt", "baseline, no system prompt", "baseline with the persona prompt", "final, no system prompt"]
        colgroup = ('<colgroup><col style="width:8%"><col style="width:17%"><col style="width:25%"><col style="width:25%"><col style="width:25%">'
                    "</colgroup>")
        shown = f" Showing {min(len(samples), SAMPLE_LIMIT)} of {len(samples)}." if len(samples) > SAMPLE_LIMIT else ""
        return _section("samples", title, f'<p class="note">{esc(note + shown)}</p>' + _table(head, rows, "samples").replace("<thead>", colgroup + "<thead>", 1))
    if samples:
        rows = [[esc(s.get("context", "")), esc(as_text(s.get("prompt"))), reply(s, "baseline"), reply(s, "final")] for s in samples[:SAMPLE_LIMIT]]
        note = ("Baseline and final model on the same held-out prompts, no system prompt, the same decoding; the evaluator's consistency score below each reply. "
                "This run's stage 7 predates the persona-prompted baseline column.")
    else:
        base = rd.json(rd.path("04_evaluation", "baseline_samples", "baseline_samples.json"))
        samples = [s for s in _list(base) if isinstance(s, dict)]
        if not samples:
            return _section("samples", title, _absent(rd, "07_final_eval", "samples.json"))
        rows = [[esc(s.get("context", "")), esc(as_text(s.get("prompt"))), esc(as_text(s.get("response"))), '<td class="note">not run yet</td>']
                for s in samples[:SAMPLE_LIMIT]]
        note = "Baseline model on held-out prompts, no system prompt (stage 4); the final model's column fills in after stage 7."
    head = ["context", "prompt", "baseline, no system prompt", "final, no system prompt"]
    shown = f" Showing {min(len(samples), SAMPLE_LIMIT)} of {len(samples)}." if len(samples) > SAMPLE_LIMIT else ""
    colgroup = '<colgroup><col style="width:10%"><col style="width:24%"><col style="width:33%"><col style="width:33%"></colgroup>'
    return _section("samples", title, f'<p class="note">{esc(note + shown)}</p>' + _table(head, rows, "samples").replace("<thead>", colgroup + "<thead>", 1))


def _files(rd: RunData) -> str:
    body = ""
    if rd.config_text:
        body += f"<details><summary>config.yaml (resolved)</summary><pre>{esc(rd.config_text)}</pre></details>"
    log = rd.text(rd.root / "log.txt")
    if log:
        lines = log.splitlines()
        body += f"<details><summary>log.txt (last {min(LOG_TAIL, len(lines))} of {len(lines)} lines)</summary><pre>{esc(chr(10).join(lines[-LOG_TAIL:]))}</pre></details>"
    if rd.warnings:
        body += '<div class="warn"><b>Files that could not be read:</b><ul>' + "".join(f"<li>{esc(w)}</li>" for w in dict.fromkeys(rd.warnings)) + "</ul></div>"
    return _section("files", "Run files", body or '<p class="note">no config.yaml or log.txt.</p>')


# --- entry points -----------------------------------------------------------------------------
def render_report(run_dir: str | Path) -> str:
    """The report of a run directory as one self-contained HTML document.

    Args:
        run_dir: the run's folder (`<run_dir>/<name>`).

    Returns:
        The HTML text (UTF-8, no external resources, no scripts).

    Raises:
        RunDirError: the folder does not exist or is not a run directory.
    """
    rd = load_run(run_dir)
    persona = _persona_doc(rd)
    traits = [str(t.get("id")) for t in _list((persona or {}).get("traits")) if isinstance(t, dict) and t.get("id")]
    final = rd.json(rd.path("07_final_eval", "final", "final.json"))
    final = final if isinstance(final, dict) else None
    v = rd.verdict(final)  # the verdict `personatune run` decides (personatune.verdict): a gate that did not pass is NO-DEPLOY
    vb = (f'<span title="{esc(v.reason)}" class="badge verdict {"b-pass" if v.verdict == "DEPLOY" else "b-fail"}">{esc(v.verdict)}</span>' if v.verdict
          else '<span class="badge verdict b-none">no verdict yet</span>')
    vline = (f'<div class="verdict-line {"v-pass" if v.verdict == "DEPLOY" else "v-fail"}"><b>{esc(v.verdict)}</b> — {esc(v.detail)}</div>'
             if v.verdict else "")
    model = dig(rd.config, "model", "name") or dig(rd.json(rd.path("01_baseline", "baseline", "baseline.json")), "model") or "?"
    pname = (persona or {}).get("name") or rd.config.get("persona") or "?"
    sections = [_gates(rd), _baseline(rd), _persona(rd, persona), _coverage(rd, traits), _evaluation(rd, traits), _curves(rd),
                _final(rd, final, traits), _samples(rd, final)]
    sections.append(_files(rd))  # last: it lists the warnings the other sections collected
    nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (("gates", "gates"), ("baseline", "baseline"), ("persona", "persona"), ("coverage", "data"),
                                                                ("evaluation", "evaluation"), ("curves", "curves"), ("final", "final"), ("samples", "samples"), ("files", "files")))
    created = rd.manifest.get("created")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>personatune report — {esc(rd.name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>personatune report — {esc(rd.name)} {vb}</h1>{vline}"
        f'<div class="meta"><span>model <b>{esc(model)}</b></span><span>persona <b>{esc(pname)}</b></span>'
        f"<span>run created <b>{esc(_when(created))}</b></span></div>{_strip(rd)}<nav>{nav}</nav></header>"
        + "".join(sections)
        + f"<footer>Generated by <code>personatune report</code> at {esc(_when(time.time()))} from {esc(rd.root)}. "
        "Built from the run directory alone; no model was loaded.</footer></body></html>\n"
    )


def build_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.html` atomically.

    Args:
        run_dir: the run's folder (`<run_dir>/<name>`).

    Returns:
        The path of the written report.

    Raises:
        RunDirError: the folder does not exist or is not a run directory, or report.html is a folder.
    """
    out = Path(run_dir) / "report.html"
    if out.is_dir():  # checked before the work; the atomic write replaces a file or symlink, never what a link points to
        raise RunDirError(f"{out} is a folder, so the report cannot be written there; fix: move or delete that folder")
    text = render_report(run_dir)
    atomic_write_text(out, text)
    return out
