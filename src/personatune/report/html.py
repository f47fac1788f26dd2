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

The modules, by role: html.py (this one) is the page shell: the header, navigation, CSS, the run-files
section and the entry points; sections.py holds the gates and stages 1-4, curves.py stages 5-6, final.py
stage 7 and the samples; cells.py the shared escaping and table cells; load.py reads the run directory.

KL wording: files written since drift KL name their reference (`kl_reference`) and carry `persona_shift`;
their `kl` is shown as "drift KL". Older files' `kl` was measured against the unprompted baseline and is
shown as "KL to the unprompted baseline (run written before drift KL)", never as drift KL.
"""

from __future__ import annotations

import time
from pathlib import Path

from personatune.errors import RunDirError
from personatune.records import BaselineRecord, FinalRecord
from personatune.report.cells import as_list, esc, section, when
from personatune.report.curves import curves_section
from personatune.report.final import final_section, samples_section
from personatune.report.load import RunData, dig, load_run
from personatune.report.sections import (
    baseline_section,
    coverage_section,
    evaluation_section,
    gates_section,
    persona_doc,
    persona_section,
    stage_strip,
)
from personatune.rundir import atomic_write_text

LOG_TAIL = 40  # lines of log.txt shown

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


def files_section(rd: RunData) -> str:
    """The resolved config, the tail of log.txt, and every file (or field) that could not be read."""
    body = ""
    if rd.config_text:
        body += f"<details><summary>config.yaml (resolved)</summary><pre>{esc(rd.config_text)}</pre></details>"
    log = rd.text(rd.root / "log.txt")
    if log:
        lines = log.splitlines()
        body += f"<details><summary>log.txt (last {min(LOG_TAIL, len(lines))} of {len(lines)} lines)</summary><pre>{esc(chr(10).join(lines[-LOG_TAIL:]))}</pre></details>"
    if rd.warnings:
        body += (
            '<div class="warn"><b>Files that could not be read:</b><ul>'
            + "".join(f"<li>{esc(w)}</li>" for w in dict.fromkeys(rd.warnings))
            + "</ul></div>"
        )
    return section("files", "Run files", body or '<p class="note">no config.yaml or log.txt.</p>')


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
    persona = persona_doc(rd)
    traits = [str(t.get("id")) for t in as_list((persona or {}).get("traits")) if isinstance(t, dict) and t.get("id")]
    final = rd.typed(FinalRecord, rd.path("07_final_eval", "final", "final.json"))
    v = rd.verdict(
        final
    )  # the verdict `personatune run` decides (personatune.verdict): a gate that did not pass is NO-DEPLOY
    vb = (
        f'<span title="{esc(v.reason)}" class="badge verdict {"b-pass" if v.verdict == "DEPLOY" else "b-fail"}">{esc(v.verdict)}</span>'
        if v.verdict
        else '<span class="badge verdict b-none">no verdict yet</span>'
    )
    vline = (
        f'<div class="verdict-line {"v-pass" if v.verdict == "DEPLOY" else "v-fail"}"><b>{esc(v.verdict)}</b> — {esc(v.detail)}</div>'
        if v.verdict
        else ""
    )
    baseline = rd.typed(BaselineRecord, rd.path("01_baseline", "baseline", "baseline.json"))
    model = dig(rd.config, "model", "name") or (baseline.model if baseline is not None else None) or "?"
    pname = (persona or {}).get("name") or rd.config.get("persona") or "?"
    sections = [
        gates_section(rd),
        baseline_section(rd),
        persona_section(rd, persona),
        coverage_section(rd, traits),
        evaluation_section(rd, traits),
        curves_section(rd),
        final_section(rd, final, traits),
        samples_section(rd),
    ]
    sections.append(files_section(rd))  # last: it lists the warnings the other sections collected
    nav = " ".join(
        f'<a href="#{a}">{esc(t)}</a>'
        for a, t in (
            ("gates", "gates"),
            ("baseline", "baseline"),
            ("persona", "persona"),
            ("coverage", "data"),
            ("evaluation", "evaluation"),
            ("curves", "curves"),
            ("final", "final"),
            ("samples", "samples"),
            ("files", "files"),
        )
    )
    created = rd.manifest.get("created")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>personatune report — {esc(rd.name)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>personatune report — {esc(rd.name)} {vb}</h1>{vline}"
        f'<div class="meta"><span>model <b>{esc(model)}</b></span><span>persona <b>{esc(pname)}</b></span>'
        f"<span>run created <b>{esc(when(created))}</b></span></div>{stage_strip(rd)}<nav>{nav}</nav></header>"
        + "".join(sections)
        + f"<footer>Generated by <code>personatune report</code> at {esc(when(time.time()))} from {esc(rd.root)}. "
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
    if (
        out.is_dir()
    ):  # checked before the work; the atomic write replaces a file or symlink, never what a link points to
        raise RunDirError(f"{out} is a folder, so the report cannot be written there; fix: move or delete that folder")
    text = render_report(run_dir)
    atomic_write_text(out, text)
    return out
