"""The HTML report: sections, escaping, no external resources, graceful degradation.

Every test builds a synthetic run directory by hand (`make_run`), so no model or stage runs.
`test_report_browser.py` reuses `make_run` to open the same report in a real headless Chromium.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from personatune.errors import RunDirError
from personatune.records import GateResultRecord
from personatune.report import build_report, render_report
from personatune.report.charts import bar_chart, line_chart, nice_ticks
from personatune.report.sections import _value_text

XSS = '<script>alert("pwned")</script>'
TRAITS = ("warmth", "curiosity", "precision")
# (trait, context) -> number of scenarios targeting it; the coverage table must show exactly these.
COVERAGE = {
    ("warmth", "casual"): 3,
    ("warmth", "technical"): 2,
    ("curiosity", "emotional"): 4,
    ("precision", "technical"): 1,
}
STAGES = (
    "01_baseline",
    "02_persona",
    "03_consistency_data",
    "04_evaluation",
    "05_optimization",
    "06_iterations",
    "07_final_eval",
)


def _w(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")


def _jsonl(path: Path, rows: list[dict]) -> None:
    _w(path, "".join(json.dumps(r) + "\n" for r in rows))


def _gate(stage: str, results: list[dict], diagnosis: list[str] = (), next_steps: list[str] = ()) -> dict:
    full = [{"unit": "fraction", "n": 10, "ci": None, "description": "", "note": "", **r} for r in results]
    return {
        "stage": stage,
        "results": full,
        "diagnosis": list(diagnosis),
        "next_steps": list(next_steps),
        "passed": all(r["passed"] for r in full),
    }


def make_run(root: Path, upto: int = 7, drift: bool = True) -> Path:
    """Write a run directory whose stages 1..`upto` finished, with small hand-made artifacts.

    drift: write stages 5-7 as they are written since drift KL (`kl` = drift KL with `kl_reference`, `persona_shift`,
    the persona-prompted baseline in final.json and samples.json); False: as before it (`kl` against the unprompted
    baseline, two sample columns).
    """
    root.mkdir(parents=True, exist_ok=True)
    _w(
        root / "config.yaml",
        "name: demo-run\npersona: personas/ada.yaml\nmodel:\n  name: smollm2-135m-instruct\n"
        "data:\n  teacher:\n    base_url: http://127.0.0.1:8000/v1\ngates:\n  optimization:\n    max_kl: 0.1\n",
    )
    _w(root / "log.txt", "".join(f"2025-01-01 00:00:{i:02d} event {i}\n" for i in range(60)))
    gates = {
        "01_baseline": _gate(
            "01_baseline",
            [{"metric": "chat_template_present", "value": 1.0, "threshold": 1, "direction": ">=", "passed": True}],
        ),
        "02_persona": _gate(
            "02_persona",
            [{"metric": "separability[warmth]", "value": 0.95, "threshold": 0.8, "direction": ">=", "passed": True}],
        ),
        "03_consistency_data": _gate(
            "03_consistency_data",
            [
                {
                    "metric": "chosen_consistency_rate",
                    "value": 0.91,
                    "threshold": 0.85,
                    "direction": ">=",
                    "passed": True,
                    "n": 120,
                    "ci": [0.85, 0.95],
                }
            ],
        ),
        "04_evaluation": _gate(
            "04_evaluation",
            [{"metric": "adherence[technical]", "value": 0.8123, "threshold": 0.9, "direction": ">=", "passed": False}],
            diagnosis=[f"context technical drifts {XSS}"],
            next_steps=["add persona example interactions in context technical"],
        ),
        "05_optimization": _gate(
            "05_optimization",
            [
                {
                    "metric": "kl",
                    "value": 0.07,
                    "threshold": 0.1,
                    "direction": "<=",
                    "unit": "nats/token",
                    "passed": True,
                }
            ],
        ),
        "06_iterations": None,
        "07_final_eval": _gate(
            "07_final_eval",
            [
                {
                    "metric": "retention",
                    "value": 0.97,
                    "threshold": 0.95,
                    "direction": ">=",
                    "unit": "ratio",
                    "passed": True,
                }
            ],
        ),
    }
    manifest = {"version": 1, "created": 1735689600.0, "stages": {}}
    for i, sid in enumerate(STAGES[:upto]):
        g = gates[sid]
        manifest["stages"][sid] = {
            "status": "done",
            "config_hash": "abc",
            "inputs": {},
            "outputs": {},
            "started": 1735689600.0 + i,
            "finished": 1735689601.5 + i,
            "seconds": 1.5,
            "message": f"{sid} ok",
            "error": None,
            "gate": None if g is None else {"passed": g["passed"], "results": g["results"]},
        }
        if g is not None:
            _w(root / sid / "gate.json", g)
    _w(root / "manifest.json", manifest)

    _w(
        root / "01_baseline" / "baseline.json",
        {
            "model": "smollm2-135m-instruct",
            "path": "/models/smol",
            "parameters": 134515008,
            "capability": {"score": 0.42, "n": 50, "tasks": {"arithmetic": 0.3, "facts": 0.54}},
            "perplexity": {"perplexity": 12.5, "nll_per_token": 2.53, "tokens": 900},
            "sanity_prompt": "In one sentence, what is the capital of France?",
            "sanity_reply": "Paris.",
        },
    )
    _w(
        root / "02_persona" / "persona.yaml",
        "name: Ada <the tutor>\nsummary: A warm & precise tutor.\ntraits:\n"
        + "".join(
            f"  - id: {t}\n    description: expresses {t}\n    positive: [a, b, c]\n    negative: [x, y, z]\n"
            for t in TRAITS
        )
        + "style:\n  formality: casual\n  words: [20, 120]\n",
    )
    manifest["stages"]["02_persona"]["outputs"] = {"persona": {"path": "02_persona/persona.yaml", "hash": "h"}}
    _w(root / "manifest.json", manifest)
    if upto < 3:
        return root

    scen = [
        {
            "id": f"{c}-{t}-{k}",
            "context": c,
            "messages": [{"role": "user", "content": f"q {k}"}],
            "targets": [t],
            "split": "heldout" if k == 0 else "train",
            "source": "bank",
        }
        for (t, c), n in COVERAGE.items()
        for k in range(n)
    ]
    _jsonl(root / "03_consistency_data" / "scenarios.jsonl", scen)
    pair = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
        "context": "casual",
        "targets": ["warmth"],
    }
    _jsonl(
        root / "03_consistency_data" / "train" / "pairs.jsonl",
        [{**pair, "violated_traits": ["warmth"], "rejected_kind": "flip"}] * 5
        + [{**pair, "violated_traits": ["curiosity"], "rejected_kind": "baseline"}] * 2,
    )
    _jsonl(
        root / "03_consistency_data" / "heldout" / "pairs.jsonl",
        [{**pair, "violated_traits": ["warmth"], "rejected_kind": "flip"}],
    )
    _w(root / "03_consistency_data" / "README.md", "# Dataset card\n\ncoverage table here\n")
    # Recorded like the real stage: folders as outputs, files found inside them.
    manifest["stages"]["03_consistency_data"]["outputs"] = {
        k: {"path": f"03_consistency_data/{v}", "hash": "h"}
        for k, v in (
            ("scenarios", "scenarios.jsonl"),
            ("train", "train"),
            ("heldout", "heldout"),
            ("card", "README.md"),
        )
    }
    _w(root / "manifest.json", manifest)
    if upto < 4:
        return root

    m = lambda v, n=30: {"value": v, "n": n, "ci": [v - 0.05, min(1.0, v + 0.05)]}  # noqa: E731
    _w(
        root / "04_evaluation" / "report.json",
        {
            "auroc": {
                "warmth": {"auroc": 0.97, "n_pos": 10, "n_neg": 10},
                "curiosity": {"auroc": 0.88, "n_pos": 8, "n_neg": 9},
                "precision": {"auroc": None, "n_pos": 3, "n_neg": 0},
            },
            "adherence": {
                "overall": m(0.93),
                "per_trait": {t: m(0.9 + 0.02 * i) for i, t in enumerate(TRAITS)},
                "per_context": {"casual": m(0.95), "technical": m(0.8123), "emotional": m(0.92)},
            },
            "style_variance": 0.11,
            "consistency_rate": m(0.9),
            "n_heldout": 30,
            "baseline_persona": {"consistency_rate": m(0.3), "adherence": m(0.55), "style_variance": 0.2, "n": 30},
        },
    )
    _w(
        root / "04_evaluation" / "baseline_samples.json",
        [{"id": "s1", "context": "casual", "prompt": "How are you?", "response": "Fine. " + XSS}],
    )
    if upto < 5:
        return root

    shift = (
        (
            lambda x: {
                "persona_shift": 0.2 + 0.02 * x,
                "persona_shift_stderr": 0.01,
                "kl_reference": "persona-prompted baseline",
            }
        )
        if drift
        else (lambda x: {})
    )
    _jsonl(
        root / "05_optimization" / "metrics.jsonl",
        [
            {
                "step": s,
                "kl": 0.01 * s,
                "kl_stderr": 0.005,
                **shift(s),
                "consistency": 0.5 + 0.08 * s,
                "adherence": 0.6 + 0.06 * s,
                "style_variance": 0.2 - 0.02 * s,
                "reward": 0.4 + 0.1 * s,
                "checkpoint": f"05_optimization/checkpoint-{s}",
            }
            for s in range(0, 6)
        ],
    )
    _jsonl(
        root / "06_iterations" / "rounds.jsonl",
        [
            {
                "round": r,
                "kl": 0.05 + 0.01 * r,
                "kl_stderr": 0.004,
                **shift(r),
                "consistency": 0.8 + 0.04 * r,
                "consistency_ci": [0.75 + 0.04 * r, 0.85 + 0.04 * r],
                "adherence": 0.88 + 0.02 * r,
                "style_variance": 0.12,
                "pairs": 40,
                "steps": 10,
                "passed": r > 1,
                "kept": r == 3,
                "seconds": 12.5,
            }
            for r in (1, 2, 3)
        ],
    )
    if upto < 7:
        return root

    # The real stage-7 format (src/personatune/stages/s7_final.py).
    mm = lambda v, n=40: {"value": v, "n": n, "ci": [max(0.0, v - 0.1), min(1.0, v + 0.1)]}  # noqa: E731
    gates7 = [
        {
            "metric": "persona_improvement_ci_low",
            "value": 0.31,
            "threshold": 0.0,
            "direction": ">",
            "unit": "fraction",
            "passed": True,
        },
        {
            "metric": "capability_retention",
            "value": 0.97,
            "threshold": 0.95,
            "direction": ">=",
            "unit": "ratio",
            "passed": True,
        },
    ]
    _w(
        root / "07_final_eval" / "final.json",
        {
            "verdict": "DEPLOY",
            "reasons": ["persona improvement interval lies above 0", "retention 0.97 >= 0.95"],
            "n_prompts": 40,
            "improvement": {
                "value": 0.42,
                "ci": [0.31, 0.53],
                "n": 40,
                "baseline": 0.3,
                "final": 0.72,
                "method": "paired percentile bootstrap over prompts, B=1000, seed=0",
            },
            "consistency": {"baseline": mm(0.3), "final": mm(0.72)},
            "adherence": {"baseline": mm(0.55), "final": mm(0.93)},
            "style_variance": {"baseline": 0.2, "final": 0.1},
            "retention": {
                "value": 0.97,
                "baseline_score": 0.42,
                "final_score": 0.4074,
                "n_items": 36,
                "tasks": {
                    "arithmetic": {
                        "baseline": 0.3,
                        "candidate": 0.25,
                        "drop": 0.05,
                        "allowed": 0.2,
                        "ok": True,
                        "n": 12,
                    },
                    "facts": {"baseline": 0.54, "candidate": 0.2, "drop": 0.34, "allowed": 0.25, "ok": False, "n": 14},
                },
            },
            "perplexity": {"baseline": {"perplexity": 12.5}, "final": {"perplexity": 13.1}},
            "per_trait": {
                "warmth": {"baseline": mm(0.5), "final": mm(0.9)},
                "curiosity": {"baseline": mm(0.25), "final": mm(0.75)},
                "precision": {"baseline": mm(0.6), "final": mm(0.6)},
            },
            "per_context": {
                "casual": {
                    "n": 20,
                    "consistency": {"baseline": mm(0.35), "final": mm(0.91)},
                    "adherence": {"baseline": mm(0.5), "final": mm(0.95)},
                },
                "adversarial": {
                    "n": 20,
                    "consistency": {"baseline": mm(0.2), "final": mm(0.65)},
                    "adherence": {"baseline": mm(0.4), "final": mm(0.85)},
                },
            },
            "robustness": {"context": "adversarial", "n": 20, "before": mm(0.2, 20), "after": mm(0.65, 20)},
            "kl": {"kl_per_token": 0.061, "kl_per_token_stderr": 0.004, "tokens": 900, "unit": "nats/token"},
            "lm_eval": {
                "tasks": {
                    "arc_local": {
                        "metric": "acc,none",
                        "baseline": 0.61,
                        "final": 0.58,
                        "drop": 0.03,
                        "allowed": 0.094,
                        "ok": True,
                        "n": 100,
                    }
                },
                "not_compared": {"arc_easy": "not measured on the baseline: its data could not be loaded (offline?)"},
                "rule": "a task fails when its primary metric moves the wrong way by more than 1.96 x the baseline's standard error",
            },
            "earlier_gates": {"05_optimization": {"status": "done", "gate_passed": True}},
            "gates": gates7,
            **(
                {
                    "kl_reference": "persona-prompted baseline",
                    "persona_shift": {
                        "kl_per_token": 0.27,
                        "kl_per_token_stderr": 0.02,
                        "tokens": 900,
                        "unit": "nats/token",
                        "reference": "the stage-1 baseline without the persona context (persona shift)",
                    },
                    "on_task": {"baseline": mm(0.9), "final": mm(0.85)},
                    "prompted_baseline": {
                        "consistency": mm(0.8),
                        "on_task": mm(0.95),
                        "adherence": mm(0.97),
                        "n": 40,
                        "gap_closed": 0.84,
                        "context": "persona system prompt + few-shot turns",
                    },
                }
                if drift
                else {}
            ),
        },
    )
    sample = {
        "id": "p1",
        "context": "technical",
        "prompt": "Tell me about <b>HTML</b>",
        "baseline": "baseline says " + XSS,
        "final": 'final <a href="https://evil.example">x</a>',
        "baseline_consistency": 0.12,
        "final_consistency": 0.88,
    }
    if drift:
        sample |= {
            "baseline_prompted": "Arr, prompted " + XSS,
            "baseline_prompted_consistency": 0.93,
            "baseline_prompted_consistent": True,
        }
    _w(root / "07_final_eval" / "samples.json", [sample])
    return root


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def _row_numbers(section: str, label: str) -> list[str]:
    row = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", section, re.S)
    assert row, f"row {label} missing"
    return re.findall(r'<td class="num"[^>]*>([^<]*)</td>', row.group(1))


def test_full_run_has_every_section(tmp_path):
    run = make_run(tmp_path / "demo")
    out = build_report(run)
    assert out == run / "report.html"
    page = out.read_text(encoding="utf-8")
    for sid in ("gates", "baseline", "persona", "coverage", "evaluation", "curves", "final", "samples", "files"):
        assert f'<section id="{sid}">' in page
    assert "demo-run" in page and "smollm2-135m-instruct" in page and "Ada &lt;the tutor&gt;" in page
    assert 'class="badge verdict b-pass">DEPLOY<' in page
    # Every stage with a gate.json has its table; stage 4's failing gate shows value, threshold and FAIL.
    gates = _section(page, "gates")
    assert gates.count("<table>") == 6
    assert re.search(
        r'<tr class="fail"><td>adherence\[technical\]</td><td class="num">0.8123</td><td class="num">&gt;= 0.9</td>',
        gates,
    )
    assert "0.85..0.95" in gates and "add persona example interactions in context technical" in gates
    # Curves: KL (with its stderr band and budget line), persona metrics and style variance, for steps and rounds.
    curves = _section(page, "curves")
    assert curves.count("<svg") == 6 and "<polygon" in curves and "budget 0.1" in curves
    final = _section(page, "final")
    assert final.count("<svg") == 1 and "0.31..0.53" in final and "retention 0.97 &gt;= 0.95" in final
    # Verdict banner, the baseline-vs-final table with its gate column, the failing task, the per-context heatmap.
    assert '<div class="banner banner-pass"><b>DEPLOY</b>' in final
    assert re.search(
        r'<tr class="pass"><td>consistency rate</td><td class="num">0.300 <span class="note">\[0.2..0.4\]</span></td>'
        r'<td class="num">0.720 .*?improvement 0.42 \(95% CI 0.31..0.53',
        final,
    )
    assert re.search(
        r'<tr class="fail"><td>facts</td><td class="num">0.54</td><td class="num">0.2</td><td class="num">0.34</td>',
        final,
    )
    assert _row_numbers(final, "adversarial") == ["0.2", "0.65", "0.4", "0.85"]
    # Optional lm-eval tasks: compared ones with their drop rule, skipped ones with the reason.
    assert re.search(
        r'<tr class="pass"><td>arc_local</td><td>acc,none</td><td class="num">0.61</td><td class="num">0.58</td>', final
    )
    assert "arc_easy: not compared (not measured on the baseline: its data could not be loaded (offline?))." in final
    assert "robustness: adversarial prompts answered in persona (n=20)" in final and "0.061 ± 0.004 nats/token" in final
    # Stage-6 rounds: the table marks the kept round; the consistency interval is drawn as a band.
    assert (
        "Kept: round 3" in curves and curves.count("<b>kept</b>") == 1 and curves.count("<polygon") == 5
    )  # drift KL, persona shift (x2), consistency
    assert "log.txt (last 40 of 60 lines)" in page


def test_no_unescaped_file_text(tmp_path):
    page = render_report(make_run(tmp_path / "demo"))
    assert "<script" not in page.lower()
    assert "<b>HTML</b>" not in page and "Tell me about &lt;b&gt;HTML&lt;/b&gt;" in page
    assert (
        page.count("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;") >= 2
    )  # sample response and gate diagnosis
    assert '<a href="https://evil.example">' not in page


def test_no_external_resources(tmp_path):
    page = render_report(make_run(tmp_path / "demo"))
    assert not re.search(r"""(?:src|href|xlink:href|action)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"<link\b|@import|url\(", page, re.I)
    assert re.findall(r'href="([^"]*)"', page) and all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))


def test_coverage_counts_trait_by_context(tmp_path):
    cov = _section(render_report(make_run(tmp_path / "demo")), "coverage")
    # columns: casual, technical, emotional, prompts, contexts, held-out, violated in pairs
    assert _row_numbers(cov, "<code>warmth</code>") == ["3", "2", "0", "5", "2", "2", "6"]
    assert _row_numbers(cov, "<code>curiosity</code>") == ["0", "0", "4", "4", "1", "1", "2"]
    assert _row_numbers(cov, "<code>precision</code>") == ["0", "1", "0", "1", "1", "1", "0"]


def test_bars_are_proportional_to_values(tmp_path):
    final = _section(render_report(make_run(tmp_path / "demo")), "final")
    widths = {
        m.group(2): float(m.group(1))
        for m in re.finditer(
            r'<rect x="[\d.]+" y="\d+" width="([\d.]+)" height="\d+" fill="#\w+"><title>([^<]*)</title>', final
        )
    }
    assert widths["warmth / final: 0.9"] / widths["warmth / baseline: 0.5"] == pytest.approx(0.9 / 0.5, rel=0.01)
    assert widths["curiosity / final: 0.75"] / widths["curiosity / baseline: 0.25"] == pytest.approx(3.0, rel=0.01)


def test_line_chart_maps_higher_values_higher():
    svg = line_chart({"kl": [(0, 0.01), (1, 0.05), (2, 0.03)]}, x_label="step", y_label="KL")
    cx_cy = [(float(a), float(b)) for a, b in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)]
    assert [c[0] for c in cx_cy] == sorted(c[0] for c in cx_cy)
    assert cx_cy[1][1] < cx_cy[2][1] < cx_cy[0][1]  # SVG y grows downwards


def test_charts_tolerate_missing_and_single_points():
    assert "n/a" in bar_chart(["a", "b"], {"s": [0.5, None]})
    one = line_chart({"kl": [(3, 0.2)], "none": [(3, None)]}, x_label="round", y_label="KL")
    assert one.count("<circle") == 1
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_stages_1_2_only_render_with_notes(tmp_path):
    page = render_report(make_run(tmp_path / "early", upto=2))
    assert "no verdict yet" in page
    assert "stage 3, Consistency data, has not run yet" in page
    assert "stage 4, Persona evaluation, has not run yet" in page
    assert "stage 5, Optimization (KL-bounded), has not run yet" in page
    assert "stage 7, Final evaluation, has not run yet" in page
    assert "Capability suite: score 0.42" in page and "<code>curiosity</code>" in page


def test_stage_4_samples_shown_before_final(tmp_path):
    samples = _section(render_report(make_run(tmp_path / "mid", upto=6)), "samples")
    assert "Fine. &lt;script&gt;" in samples and "not run yet" in samples


def test_no_deploy_banner_and_partial_final(tmp_path):
    run = make_run(tmp_path / "demo")
    final = json.loads((run / "07_final_eval" / "final.json").read_text())
    final["verdict"], final["reasons"] = (
        "NO-DEPLOY",
        ["persona_improvement_ci_low = -0.02 (needs > 0): likely cause: x; change: y"],
    )
    final["per_context"] = {
        "casual": {"baseline": {"value": 0.3, "n": 5}, "final": {"value": 0.8, "n": 5}},
        "odd": "not a mapping",
    }
    for k in ("retention", "robustness", "kl", "gates"):
        del final[k]
    (run / "07_final_eval" / "final.json").write_text(json.dumps(final))
    page = render_report(run)
    sec = _section(page, "final")
    assert '<div class="banner banner-fail"><b>NO-DEPLOY</b> — why<ul><li>persona_improvement_ci_low = -0.02' in sec
    assert 'class="badge verdict b-fail">NO-DEPLOY<' in page
    assert re.search(r"<tr><td>casual</td><td[^>]*>0.3</td><td[^>]*>0.8</td></tr>", sec)
    assert "odd" not in sec and "Capability per task" not in sec


def test_a_field_that_does_not_fit_is_named_in_one_line(tmp_path):
    # final.json, metrics.jsonl and gate.json are read as records (personatune.records): a bad field costs only itself.
    run = make_run(tmp_path / "demo")
    final = json.loads((run / "07_final_eval" / "final.json").read_text())
    final["improvement"]["value"] = "large"
    (run / "07_final_eval" / "final.json").write_text(json.dumps(final))
    rows = [json.loads(x) for x in (run / "05_optimization" / "metrics.jsonl").read_text().splitlines()]
    rows[1]["kl"], rows[2]["step"] = "high", None
    _jsonl(run / "05_optimization" / "metrics.jsonl", rows)
    page = render_report(run)
    files = _section(page, "files")
    assert "07_final_eval/final.json: improvement.value: Input should be a valid number" in files
    assert (
        "05_optimization/metrics.jsonl: 1 row(s) skipped, 2 field(s) left out: they do not fit its record (first: line 2: kl: Input"
        in files
    )
    assert (
        "Final evaluation (stage 7)" in page and 'class="badge verdict b-pass">DEPLOY<' in page
    )  # the rest is still shown
    assert "<title>drift KL at step 3: 0.03</title>" in _section(page, "curves")


def test_side_by_side_samples_with_scores(tmp_path):
    samples = _section(render_report(make_run(tmp_path / "demo")), "samples")
    assert "same held-out prompts" in samples and "[consistency 0.12]" in samples and "[consistency 0.88]" in samples
    assert "not run yet" not in samples


def test_corrupt_files_are_reported_not_fatal(tmp_path):
    run = make_run(tmp_path / "demo")
    (run / "07_final_eval" / "final.json").write_text("{not json")
    with open(run / "05_optimization" / "metrics.jsonl", "a") as f:
        f.write("garbage line\n")
    page = render_report(run)
    assert "07_final_eval/final.json: not valid JSON" in page
    assert "05_optimization/metrics.jsonl: 1 line(s) are not JSON objects" in page
    assert "<polyline" in _section(page, "curves")


def test_manifest_output_outside_run_is_ignored(tmp_path):
    run = make_run(tmp_path / "demo", upto=2)
    (tmp_path / "secret.yaml").write_text("name: SECRET\nsummary: outside\n")
    man = json.loads((run / "manifest.json").read_text())
    man["stages"]["02_persona"]["outputs"]["persona"]["path"] = "../secret.yaml"
    (run / "manifest.json").write_text(json.dumps(man))
    page = render_report(run)
    assert "SECRET" not in page and "Ada &lt;the tutor&gt;" in page


def test_build_report_writes_atomically(tmp_path):
    run = make_run(tmp_path / "demo", upto=3)
    (run / "report.html").write_text("old")
    path = build_report(str(run))
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not list(run.glob(".report.html.*"))


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not a run directory"):
        build_report(tmp_path / "empty")


@pytest.mark.parametrize("junk", [[], "text", 3, None, {"results": "x", "per_trait": [1], "samples": "s", "stages": 1}])
def test_wrong_shapes_never_crash(tmp_path, junk):
    # Stages 5-7 are still being written: whatever shape a file takes, the report must render.
    run = make_run(tmp_path / "demo")
    files = sorted(p for p in run.rglob("*") if p.suffix in (".json", ".jsonl") and p.name != "manifest.json")
    for p in files:
        p.write_text(json.dumps(junk) + ("\n" if p.suffix == ".jsonl" else ""))
    man = json.loads((run / "manifest.json").read_text())
    for i, sid in enumerate(STAGES):
        man["stages"][sid] = (
            junk
            if i % 2
            else {"status": junk, "outputs": junk, "gate": junk, "seconds": junk, "finished": junk, "message": junk}
        )
    (run / "manifest.json").write_text(json.dumps(man))
    page = render_report(run)
    assert page.endswith("</html>\n") and '<section id="final">' in page
    assert len(files) == 16


def test_inconclusive_stage_is_its_own_state_in_the_report(tmp_path):
    run = make_run(tmp_path / "demo", upto=4)
    result = {
        "metric": "auroc[warmth]",
        "value": 0.95,
        "threshold": 0.9,
        "direction": ">=",
        "passed": False,
        "status": "inconclusive",
        "n": 12,
        "min_n": 30,
        "n_key": "data.heldout_fraction",
        "note": "inconclusive: n=12 < 30; 18 more would decide it (raise data.heldout_fraction)",
    }
    gate = {**_gate("04_evaluation", [result], diagnosis=["auroc[warmth]: too few"]), "status": "inconclusive"}
    _w(run / "04_evaluation" / "gate.json", gate)
    m = json.loads((run / "manifest.json").read_text())
    m["stages"]["04_evaluation"].update(
        status="gate_inconclusive", gate={"passed": False, "status": "inconclusive", "results": gate["results"]}
    )
    _w(run / "manifest.json", m)
    page = render_report(run)
    gates = _section(page, "gates")
    assert 'class="badge b-inc">gate inconclusive<' in page and 'class="s-inc"' in page
    assert (
        '<tr class="inc">' in gates
        and '<td class="res">INCONCLUSIVE</td>' in gates
        and "18 more would decide it" in gates
    )
    assert (
        'title="inconclusive at stage 04_evaluation: 18 more samples needed (raise data.heldout_fraction) for auroc[warmth]" '
        'class="badge verdict b-fail">NO-DEPLOY<'
    ) in page


OLD_KL = "KL to the unprompted baseline (run written before drift KL)"


def test_drift_kl_and_persona_shift_with_units(tmp_path):
    page = render_report(make_run(tmp_path / "demo"))
    curves, final = _section(page, "curves"), _section(page, "final")
    # Stages 5 and 6: one chart each with both series (legend), each point its own value, the budget line on drift KL.
    assert (
        re.findall(r'<text x="[\d.]+" y="[\d.]+">(drift KL|persona shift)</text>', curves)
        == ["drift KL", "persona shift"] * 2
    )
    assert (
        "<title>persona shift at step 3: 0.26</title>" in curves
        and "<title>drift KL at round 2: 0.07</title>" in curves
    )
    assert (
        curves.count(
            "drift KL = KL(policy(·|x) ‖ baseline(·|persona context, x)) in nats/token, gated by the budget line"
        )
        == 2
    )
    assert "<th>drift KL (nats/token)</th><th>persona shift (nats/token)</th>" in curves  # the rounds table
    assert re.search(r'<td class="num">3</td><td class="num">0.08 ± 0.004</td><td class="num">0.26 ± 0.01</td>', curves)
    assert (
        curves.count(
            "<th>drift KL (nats/token)</th><th>KL standard error (nats/token)</th><th>persona shift (nats/token)</th>"
        )
        == 2
    )
    # Stage 7: both, with units, and the context-distillation target beside the baseline and the final model.
    assert re.search(
        r"<td>drift KL: KL\(final ‖ baseline given the persona context\), nats/token</td>.*?"
        r"<td>0.061 ± 0.004 nats/token over 900 tokens; reported here, gated in stages 5-6</td>",
        final,
    )
    assert re.search(
        r"<td>persona shift: KL\(final ‖ baseline without it\), nats/token</td>.*?<td>0.27 ± 0.02 nats/token over 900 tokens; "
        r"information, not a gate</td>",
        final,
    )
    assert re.search(
        r"<tr><td>consistency rate</td><td class=\"num\">0.300 .*?</td><td class=\"num\">0.800 .*?</td><td class=\"num\">0.720 ",
        final,
    )
    assert "Share of the consistency gap the final model closed: 0.840" in final
    assert OLD_KL not in page


def test_old_run_kl_is_labelled_against_the_unprompted_baseline(tmp_path):
    page = render_report(make_run(tmp_path / "old", drift=False))
    curves, final, samples = _section(page, "curves"), _section(page, "final"), _section(page, "samples")
    # Never called drift KL: the legend, the table headers and the final row name the unprompted baseline.
    assert re.findall(r'<text x="[\d.]+" y="[\d.]+">([^<]*KL[^<]*)</text>', curves) == [OLD_KL] * 2
    assert f"<th>{OLD_KL} (nats/token)</th>" in curves and "<th>drift KL" not in page and ">drift KL<" not in page
    assert re.search(
        rf"<td>{re.escape(OLD_KL)}: KL\(final ‖ baseline\), nats/token</td>.*?<td>0.061 ± 0.004 nats/token", final
    )
    assert "drift KL:" not in final and "persona shift" not in page and "Context-distillation target" not in final
    # Its samples have two columns.
    assert (
        "<th>baseline, no system prompt</th><th>final, no system prompt</th>" in samples
        and "with the persona prompt" not in samples
    )
    assert "[consistency 0.12]" in samples and "[consistency 0.88]" in samples


def test_mixed_rows_split_into_drift_and_old_series(tmp_path):
    run = make_run(tmp_path / "mixed")
    rows = [json.loads(x) for x in (run / "05_optimization" / "metrics.jsonl").read_text().splitlines()]
    for r in rows[:3]:  # a stage 5 resumed across the change: its first rows predate drift KL
        for k in ("persona_shift", "persona_shift_stderr", "kl_reference"):
            del r[k]
    _jsonl(run / "05_optimization" / "metrics.jsonl", rows)
    steps = _section(render_report(run), "curves").split("Iterative rounds")[0]
    assert "<title>drift KL at step 4: 0.04</title>" in steps and f"<title>{OLD_KL} at step 1: 0.01</title>" in steps
    assert "<title>drift KL at step 1" not in steps and f"<title>{OLD_KL} at step 4" not in steps


def test_three_sample_columns_side_by_side(tmp_path):
    samples = _section(render_report(make_run(tmp_path / "demo")), "samples")
    assert (
        "<th>context</th><th>prompt</th><th>baseline, no system prompt</th><th>baseline with the persona prompt</th>"
        "<th>final, no system prompt</th>"
    ) in samples
    cells = re.findall(r"<td>(.*?)</td>", re.search(r"<tbody>(.*?)</tbody>", samples, re.S).group(1), re.S)
    assert [c.split("\n")[-1] for c in cells[2:]] == ["[consistency 0.12]", "[consistency 0.93]", "[consistency 0.88]"]
    assert (
        cells[2].startswith("baseline says")
        and cells[3].startswith("Arr, prompted &lt;script&gt;")
        and cells[4].startswith("final &lt;a")
    )


def _stop_at_stage_3(run: Path, **times: float) -> None:
    """Record the run as stopped at stage 3 by the gate of the main job of issue 14 (one failed result, two inconclusive)."""
    inc = {
        "passed": False,
        "status": "inconclusive",
        "value": 1.0,
        "threshold": 0.85,
        "direction": ">=",
        "n": 129,
        "min_n": 137,
        "n_key": "data.max_prompts",
        "note": "inconclusive: n=129 < 137; 8 more would decide it (raise data.max_prompts)",
    }
    gate = {
        **_gate(
            "03_consistency_data",
            [
                {"metric": "chosen_consistency_rate", **inc},
                {"metric": "chosen_on_task_rate", **inc},
                {
                    "metric": "rejected_inconsistency_rate",
                    "value": 0.624031007751938,
                    "threshold": 0.85,
                    "direction": ">=",
                    "passed": False,
                    "status": "fail",
                    "n": 516,
                },
            ],
        ),
        "status": "fail",
    }
    _w(run / "03_consistency_data" / "gate.json", gate)
    m = json.loads((run / "manifest.json").read_text())
    m["stages"]["03_consistency_data"].update(
        status="gate_failed", gate={"passed": False, "status": "fail", "results": gate["results"]}, **times
    )
    _w(run / "manifest.json", m)


VERDICT_3 = (
    "stopped at stage 3: gate rejected_inconsistency_rate 0.624 &lt; 0.85; chosen_consistency_rate inconclusive (n=129 &lt; 137, "
    "raise data.max_prompts); chosen_on_task_rate inconclusive (n=129 &lt; 137, raise data.max_prompts)"
)


def test_header_verdict_of_a_run_stopped_at_a_gate(tmp_path):
    run = make_run(tmp_path / "stopped", upto=3)
    _stop_at_stage_3(run)
    page = render_report(run)
    header = page[page.index("<header>") : page.index("</header>")]
    assert (
        'title="the 03_consistency_data gate failed" class="badge verdict b-fail">NO-DEPLOY<' in header
    )  # the CLI's words
    assert f'<div class="verdict-line v-fail"><b>NO-DEPLOY</b> — {VERDICT_3}</div>' in header
    assert "no verdict yet" not in page


def test_stale_later_stages_do_not_change_the_verdict(tmp_path):
    # Stages 4-7 (DEPLOY in final.json) are left from an earlier attempt; stage 3 was re-run afterwards and stopped the run.
    run = make_run(tmp_path / "stale")
    m = json.loads((run / "manifest.json").read_text())
    m["stages"]["05_optimization"]["status"] = "gate_failed"
    _w(run / "manifest.json", m)
    _w(
        run / "05_optimization" / "gate.json",
        _gate(
            "05_optimization", [{"metric": "kl", "value": 0.1432, "threshold": 0.1, "direction": "<=", "passed": False}]
        ),
    )
    _stop_at_stage_3(run, started=1735700000.0, finished=1735700100.0)
    page = render_report(run)
    assert f"<b>NO-DEPLOY</b> — {VERDICT_3}</div>" in page and 'title="the 03_consistency_data gate failed"' in page
    assert (
        '<div class="banner banner-pass"><b>DEPLOY</b>' in page
    )  # stage 7's own (old) banner still shows what it decided then
    # With --keep-going the later stages ran after stage 3: every gate that did not pass is named, as the CLI does at the end.
    m = json.loads((run / "manifest.json").read_text())
    for i, sid in enumerate(STAGES[3:]):
        m["stages"][sid].update(started=1735700200.0 + i, finished=1735700200.5 + i)
    _w(run / "manifest.json", m)
    page = render_report(run)
    assert 'title="gates failed: 03_consistency_data, 05_optimization" class="badge verdict b-fail">NO-DEPLOY<' in page
    assert (
        "<b>NO-DEPLOY</b> — gates failed: stage 3: gate rejected_inconsistency_rate 0.624 &lt; 0.85; chosen_consistency_rate inconclusive "
        "(n=129 &lt; 137, raise data.max_prompts); chosen_on_task_rate inconclusive (n=129 &lt; 137, raise data.max_prompts); "
        "stage 5: gate kl 0.1432 &gt; 0.1</div>"
    ) in page


def test_gate_table_shows_a_value_on_its_side_of_the_threshold():
    r = GateResultRecord(metric="style_variance", value=0.149996, threshold=0.15, direction="<", passed=True)
    assert _value_text(r) == "0.149996"  # 4 digits ("0.15") would read as a failure of < 0.15
    assert _value_text(GateResultRecord(metric="kl", value=0.08745, threshold=0.1, direction="<=")) == "0.08745"
    assert _value_text(GateResultRecord(metric="x", value=None, threshold=0.1, direction="<=")) == "—"
