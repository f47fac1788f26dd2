"""Gold sets: parsing (bad lines reported and skipped), the report's arithmetic on hand-made records, the
instrument targets, and `personatune score --gold` through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from personatune.scoring.gold import KINDS, GoldScores, gold_report, load_gold, parse_gold_lines, unmet_targets
from personatune.scoring.record import ResponseScore
from personatune.scoring.style import STYLE_FEATURES

REPO = Path(__file__).resolve().parents[2]
NOVA = REPO / "benchmarks" / "gold" / "nova"
TRAITS = ["a", "b"]


def line(i: int, **over) -> str:
    obj = {
        "id": f"p{i}",
        "context": ["casual", "technical"][i % 2],
        "messages": [{"role": "user", "content": f"question {i}?"}],
        "targets": ["a"],
        "gold": "in persona",
        "generic": "plain",
        "flipped": {"trait": "b", "text": "against b"},
        "babble": "in voice",
    }
    obj.update(over)
    return json.dumps(obj)


def test_parse_reports_every_bad_line_by_number_and_keeps_the_rest():
    lines = [
        line(0),
        "{not json",
        line(2, targets=["zzz"]),
        line(3, flipped={"trait": "a"}),
        line(4, messages=[{"role": "assistant", "content": "x"}]),
        "",
        line(0),
        line(6, gold=" "),
        json.dumps([1]),
        line(9),
    ]
    items, problems = parse_gold_lines(lines, TRAITS)
    assert [it.id for it in items] == ["p0", "p9"]
    got = {p["line"]: p["reason"] for p in problems}
    assert sorted(got) == [2, 3, 4, 5, 7, 8, 9]
    assert got[2].startswith("not valid JSON")
    assert "unknown trait(s) ['zzz']" in got[3]
    assert "'flipped' must be" in got[4]
    assert "must end with a user turn" in got[5]
    assert got[7] == "id 'p0' repeats an earlier line"
    assert got[8] == "'gold' must be a non-empty string"
    assert got[9] == "not a JSON object"
    assert items[1].line == 10 and items[0].prompt == "question 0?" and items[0].answers["flipped"] == "against b"


def test_load_splits_on_newline_only(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text(line(0, gold="one\u2028two") + "\n" + line(1) + "\n", encoding="utf-8")
    items, problems = load_gold(p, TRAITS)
    assert [it.id for it in items] == ["p0", "p1"] and problems == [] and items[0].answers["gold"] == "one\u2028two"


def _rec(i, kind, consistent, viol_b=0.0, on_task=0.9, voice=0.9, words=60.0):
    style = {f: 0.0 for f in STYLE_FEATURES}
    style["voice"], style["words"] = voice, words
    return ResponseScore(
        id=f"{i}/{kind}",
        traits={"a": 0.9 if consistent else 0.2, "b": 0.5},
        violations={"a": 0.0, "b": viol_b},
        style=style,
        style_match=0.9,
        rules={},
        consistent=consistent,
        consistency=0.8 if consistent else 0.2,
        targets=["a"],
        context=["casual", "technical"][i % 2],
        on_task=on_task,
    )


def test_report_arithmetic_and_targets():
    items, _ = parse_gold_lines([line(i) for i in range(10)], TRAITS)
    # gold: 9/10 consistent; generic: 0/10; flipped: 1/10 consistent, b violated in 8/10; babble off task in 9/10.
    recs = {
        "gold": [_rec(i, "gold", i != 0) for i in range(10)],
        "generic": [_rec(i, "generic", False, voice=0.05, words=80.0) for i in range(10)],
        "flipped": [_rec(i, "flipped", i == 0, viol_b=0.9 if i < 8 else 0.1) for i in range(10)],
        "babble": [_rec(i, "babble", True, on_task=0.1 if i else 0.9) for i in range(10)],
    }
    rep = gold_report(GoldScores(items, recs), min_per_context=5)
    assert rep["n"] == 10 and rep["consistent_rate"] == {"gold": 0.9, "generic": 0.0, "flipped": 0.1, "babble": 1.0}
    # balanced accuracy: (TPR 0.9 + TNR 19/20) / 2
    assert rep["balanced_accuracy"] == pytest.approx((0.9 + 0.95) / 2)
    assert rep["flipped_caught"] == pytest.approx(0.8) and rep["flipped_caught_per_trait"] == {"b": pytest.approx(0.8)}
    assert rep["on_task"]["rate"]["babble"] == pytest.approx(0.1) and rep["on_task"][
        "balanced_accuracy"
    ] == pytest.approx(0.95)
    assert rep["gates"]["generic"]["consistency_rate"]["passed"] is False
    unmet = unmet_targets(rep)
    # AUROC of consistency: 9 gold at 0.8 beat 19 negatives at 0.2 and tie 1 at 0.8; 1 gold at 0.2 ties 19:
    # (9 * 19.5 + 9.5) / 200 = 0.925 < 0.95. Flipped caught 0.8 < 0.85. The rest is met.
    assert rep["auroc"] == pytest.approx(0.925)
    assert unmet == ["auroc 0.925 < 0.95", "flipped_caught 0.800 < 0.85"], unmet


def test_per_trait_auroc_is_stage_4s_figure_gold_for_t_against_flips_on_t():
    items, _ = parse_gold_lines([line(i, flipped={"trait": "a", "text": "against a"}) for i in range(10)], TRAITS)
    # traits[a]: gold 0.9 except item 0 (0.2); flipped on a: 0.2 except item 0 (0.9). Of 100 pairs: 81 won, 9 + 9 tied,
    # 1 lost -> (81 + 9) / 100 = 0.90. Trait b: no gold answer targets it and no answer is flipped on it.
    recs = {
        "gold": [_rec(i, "gold", i != 0) for i in range(10)],
        "generic": [_rec(i, "generic", False) for i in range(10)],
        "flipped": [_rec(i, "flipped", i == 0) for i in range(10)],
        "babble": [_rec(i, "babble", True) for i in range(10)],
    }
    rep = gold_report(GoldScores(items, recs), min_per_context=5)
    assert rep["trait_auroc"] == {"a": pytest.approx(0.90), "b": None}


@pytest.mark.stage
@pytest.mark.skipif(not NOVA.is_dir(), reason="benchmarks/gold/nova not in this checkout")
def test_cli_score_gold_reports_bad_lines_and_exits_by_the_targets(tmp_path):
    src = (NOVA / "responses.jsonl").read_text(encoding="utf-8").split("\n")
    gold = tmp_path / "small.jsonl"
    gold.write_text("\n".join(src[:12] + ["{broken", json.dumps({"id": "x"})]) + "\n", encoding="utf-8")
    out = tmp_path / "rep.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "personatune",
            "score",
            "--persona",
            str(NOVA / "persona.yaml"),
            "--gold",
            str(gold),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode in (0, 1), r.stderr
    assert (
        "line 13 skipped: not valid JSON" in r.stderr
        and "line 14 skipped: 'context' must be a non-empty string" in r.stderr
    )
    assert "Traceback" not in r.stderr
    rep = json.loads(out.read_text())
    assert rep["n"] == 12 and set(rep["consistent_rate"]) == set(KINDS)
    assert (r.returncode == 0) == (rep["unmet_targets"] == [])
    assert ("targets: all met" in r.stdout) == (r.returncode == 0)
