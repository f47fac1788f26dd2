"""Minimum sample sizes on the stage gates, on-task retention, and on-task as the second axis of stage 3.

Every test builds its inputs by hand (no model, no instrument scores): the gates are pure functions of counts.
"""

from __future__ import annotations

import doctest
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

import personatune.evidence as evidence_mod
from personatune.config import load_config
from personatune.evidence import heldout_key, on_task_retention, prompts_key
from personatune.gates import Measurement
from personatune.persona import load_persona
from personatune.scenarios import Scenario
from personatune.scoring.aggregate import VARIANCE_FLOORS
from personatune.scoring.record import ResponseScore

REPO = Path(__file__).resolve().parents[2]
PERSONA = REPO / "examples" / "personas" / "captain_nova.yaml"


def cfg(*over: str):
    return load_config(None, [f"persona={PERSONA}", *over])


def test_doctests():
    assert doctest.testmod(evidence_mod).failed == 0


# --- on-task retention ----------------------------------------------------------------------------
def test_on_task_retention_is_the_ratio_of_rates_with_a_katz_interval():
    m, note = on_task_retention(Measurement(0.80, n=200), Measurement(0.90, n=150))
    assert note == "" and m.value == pytest.approx(0.8 / 0.9) and m.n == 200
    se = math.sqrt(0.2 / (200 * 0.8) + 0.1 / (150 * 0.9))
    assert m.ci == pytest.approx((0.8 / 0.9 * math.exp(-1.96 * se), 0.8 / 0.9 * math.exp(1.96 * se)))
    assert m.ci[0] < m.value < m.ci[1]
    # A candidate never on task: retention 0, no log interval.
    zero, _ = on_task_retention(Measurement(0.0, n=60), Measurement(0.9, n=60))
    assert zero.value == 0.0 and zero.ci is None
    # Retention can exceed 1 (the candidate answers more often than the baseline).
    assert on_task_retention(Measurement(1.0, n=50), Measurement(0.5, n=50))[0].value == 2.0


@pytest.mark.parametrize(
    "cand,base,phrase",
    [
        (Measurement(0.9, n=60), Measurement(0.0, n=60), "on task in 0 of 60 responses"),
        (Measurement(0.9, n=60), None, "baseline's on-task rate is unknown"),
        (None, Measurement(0.9, n=60), "candidate's on-task rate is unknown"),
    ],
)
def test_on_task_retention_undefined_is_none_with_a_note_never_a_division_by_zero(cand, base, phrase):
    m, note = on_task_retention(cand, base)
    assert m is None and phrase in note and note.startswith("not measured")


# --- which key buys samples ------------------------------------------------------------------------
def test_keys_that_buy_samples():
    assert prompts_key(cfg()) == "data.expand_per_trait"  # the whole bank is used already
    assert prompts_key(cfg("data.max_prompts=60")) == "data.max_prompts"
    assert heldout_key(cfg("data.max_prompts=60")) == "data.heldout_fraction or data.max_prompts"
    assert heldout_key(cfg("data.heldout_fraction=0.5")) == "data.heldout_fraction or data.expand_per_trait"
    assert heldout_key(cfg("data.heldout_fraction=0.75")) == "data.expand_per_trait"  # MAX_HELDOUT_FRACTION


# --- stage 3 --------------------------------------------------------------------------------------
def _stats(chosen: int, on_task: int, rejected: int, inconsistent: int, traits: list[str]) -> dict:
    return {
        "scenarios": chosen,
        "chosen": chosen,
        "chosen_consistent": chosen,
        "chosen_on_task": on_task,
        "chosen_on_task_measured": chosen,
        "off_task_only": 2,
        "rejected": rejected,
        "rejected_inconsistent": inconsistent,
        "violated_pairs": {t: 50 for t in traits},
        "by_kind": {"baseline": {"n": rejected, "inconsistent": inconsistent}},
    }


def test_stage3_gate_is_inconclusive_below_the_minimum_and_names_the_key():
    from personatune.stages.s3_consistency_data import data_gate

    spec = load_persona(PERSONA)
    c = cfg("data.max_prompts=60")
    # Coverage passes with no scenarios (bypassing the config's >= 1): this test is about the rates.
    c.gates.data = c.gates.data.model_copy(update={"min_prompts_per_trait": 0, "min_contexts_per_trait": 0})
    gate = data_gate(spec, [], _stats(40, 38, 120, 118, spec.trait_ids), c)
    by = {r.metric: r for r in gate.results}
    for m in ("chosen_consistency_rate", "chosen_on_task_rate", "rejected_inconsistency_rate"):
        r = by[m]
        assert r.status == "inconclusive" and r.min_n == 137 and not r.passed
        assert f"{137 - r.n} more would decide it (raise data.max_prompts)" in r.note
    assert by["chosen_on_task_rate"].value == pytest.approx(38 / 40) and by["chosen_on_task_rate"].ci is not None
    assert gate.status == "inconclusive" and any("raise data.max_prompts" in d for d in gate.diagnosis)
    # Enough responses: the same rates decide.
    big = data_gate(spec, [], _stats(150, 140, 400, 390, spec.trait_ids), c)
    assert {r.metric: r.status for r in big.results}["chosen_on_task_rate"] == "pass"


def test_stage3_gate_fails_on_task_with_diagnosis():
    from personatune.stages.s3_consistency_data import data_gate

    spec = load_persona(PERSONA)
    c = cfg("gates.data.min_prompts_per_trait=1", "gates.data.min_contexts_per_trait=1")
    gate = data_gate(spec, [], _stats(150, 90, 400, 390, spec.trait_ids), c)
    r = next(r for r in gate.results if r.metric == "chosen_on_task_rate")
    assert r.status == "fail" and r.value == pytest.approx(0.6)
    assert any("90/150 chosen responses address the user's request" in d and "off-task" in d for d in gate.diagnosis)


def _rec(consistent: bool, consistency: float, on_task: float | None) -> ResponseScore:
    return ResponseScore(
        id="x",
        traits={},
        violations={},
        style={f: 0.0 for f in VARIANCE_FLOORS},
        style_match=1.0,
        rules={},
        consistent=consistent,
        consistency=consistency,
        on_task=on_task,
    )


def test_stage3_chosen_must_be_consistent_and_on_task():
    from personatune.stages.s3_consistency_data import build_pairs

    spec = load_persona(PERSONA)
    scen = [
        Scenario(
            id=f"s{i}", context="casual", messages=[{"role": "user", "content": f"q{i}"}], targets=[], split="train"
        )
        for i in range(3)
    ]
    cands = [["babble", "answer"], ["only-babble"], ["unmeasured"]]
    scores = [[_rec(True, 0.99, 0.1), _rec(True, 0.7, 0.9)], [_rec(True, 0.99, 0.2)], [_rec(True, 0.8, None)]]
    for rule in ("max_consistency", "typical_voice", "adherent_voice"):
        sft, _, stats = build_pairs(spec, scen, cands, {}, scorer=None, candidate_scores=scores, select=rule)
        # The in-voice babble is more consistent, but never chosen; a prompt with only babble yields nothing.
        assert [r["messages"][-1]["content"] for r in sft] == ["answer", "unmeasured"]
        assert (
            stats["chosen"] == 2
            and stats["chosen_on_task"] == 1
            and stats["chosen_on_task_measured"] == 1
            and stats["off_task_only"] == 1
        )


# --- stage 4 --------------------------------------------------------------------------------------
def test_stage4_auroc_counts_the_smaller_side_and_adherence_counts_pairs():
    from personatune.gates import check_gates
    from personatune.stages.s4_evaluation import auroc_measurement, evaluation_specs

    c = cfg("data.max_prompts=60")
    specs = evaluation_specs(c, ["warm"], ["casual"])
    measured = {
        "auroc[warm]": auroc_measurement({"auroc": 0.97, "ci": [0.9, 1.0], "n_pos": 80, "n_neg": 12}),
        "adherence": Measurement(0.95, n=96),
        "adherence[casual]": Measurement(0.95, n=97),
        "style_variance": Measurement(0.05, n=29),
    }
    res = {r.metric: r for r in check_gates(specs, measured)}
    assert (
        res["auroc[warm]"].n == 12
        and res["auroc[warm]"].status == "inconclusive"
        and "18 more" in res["auroc[warm]"].note
    )
    assert "raise data.heldout_fraction or data.max_prompts" in res["auroc[warm]"].note
    assert res["adherence"].status == "inconclusive" and res["adherence[casual]"].status == "pass"
    assert res["style_variance"].status == "inconclusive" and res["style_variance"].min_n == 30
    assert auroc_measurement({"auroc": None, "ci": None, "n_pos": 3, "n_neg": 0}) is None
    # The minimums are configurable (per side for AUROC).
    small = evaluation_specs(
        cfg("gates.evaluation.min_auroc_per_side=5", "gates.evaluation.min_style_variance_n=10"), ["warm"], []
    )
    res = {r.metric: r for r in check_gates(small, measured)}
    assert res["auroc[warm]"].status == "pass" and res["style_variance"].status == "pass"


# --- stages 5 and 7 -------------------------------------------------------------------------------
def _ev(n: int, on_task: Measurement | None):
    kl = SimpleNamespace(per_token=0.05, stderr=0.01, sequences=n)
    return SimpleNamespace(
        kl=kl,
        consistency=Measurement(0.95, n=n),
        adherence=Measurement(0.97, n=8 * n),
        adherence_per_trait={},
        style_variance=0.05,
        style_variance_n=n,
        texts=["x"] * n,
        on_task=on_task,
    )


def test_stage5_on_task_retention_gate():
    from personatune.kl_budget import Selection
    from personatune.stages.s5_optimization import optimization_gate

    c = cfg()
    hist = [{"step": 0}]
    ok = optimization_gate(
        c, _ev(200, Measurement(0.9, n=200)), Selection(None, ""), hist, baseline_on_task=Measurement(0.92, n=200)
    )
    assert ok.passed, ok.summary()
    r = next(r for r in ok.results if r.metric == "on_task_retention")
    assert r.value == pytest.approx(0.9 / 0.92) and r.n == 200 and r.min_n == 51
    low = optimization_gate(
        c, _ev(200, Measurement(0.6, n=200)), Selection(None, ""), hist, baseline_on_task=Measurement(0.92, n=200)
    )
    assert low.status == "fail" and any("answers the request less often" in d for d in low.diagnosis)
    zero = optimization_gate(
        c, _ev(200, Measurement(0.6, n=200)), Selection(None, ""), hist, baseline_on_task=Measurement(0.0, n=200)
    )
    r = next(r for r in zero.results if r.metric == "on_task_retention")
    assert r.status == "fail" and r.value is None and "on task in 0 of 200" in r.note
    few = optimization_gate(
        c, _ev(40, Measurement(0.9, n=40)), Selection(None, ""), hist, baseline_on_task=Measurement(0.9, n=40)
    )
    assert few.status == "inconclusive"
    assert {r.metric: r.status for r in few.results}["on_task_retention"] == "inconclusive"
    assert any(
        "raise data.heldout_fraction or data.expand_per_trait" in s
        for s in few.next_steps + [r.note for r in few.results]
    )


def _fig(n: int, on_task: dict | None) -> dict:
    tasks = {"facts": {"baseline": 0.5, "candidate": 0.5, "drop": 0.0, "allowed": 0.2, "ok": True, "n": 14}}
    return {
        "improvement": {"value": 0.3, "ci": [0.2, 0.4], "n": n, "baseline": 0.3, "final": 0.6},
        "retention": {"value": 1.0, "n_items": 36, "baseline_score": 0.5, "final_score": 0.5, "tasks": tasks},
        "kl": {"kl_per_token": 0.05},
        "earlier_gates": {},
        "on_task": on_task,
    }


def test_stage7_on_task_retention_and_improvement_minimum():
    from personatune.stages.s7_final import compare_persona, final_gate

    base = [_rec(True, 0.9, 0.9 if i % 10 else 0.1) for i in range(150)]  # 90% on task
    final = [_rec(True, 0.9, 0.9 if i % 5 else 0.1) for i in range(150)]  # 80% on task
    for i, (b, f) in enumerate(zip(base, final)):
        b.id = f.id = f"p{i}"
    on = compare_persona(base, final, seed=0, min_per_context=2)["on_task"]
    assert on["baseline"]["value"] == pytest.approx(0.9) and on["final"]["value"] == pytest.approx(0.8)
    assert on["retention"]["value"] == pytest.approx(0.8 / 0.9) and on["retention"]["n"] == 150
    gate = final_gate(cfg(), _fig(150, on))
    r = next(r for r in gate.results if r.metric == "on_task_retention")
    assert r.status == "fail" and gate.diagnosis[0] == "verdict: NO-DEPLOY"
    assert any(d.startswith("on_task_retention") and "less often than the baseline" in d for d in gate.diagnosis)
    # Too few prompts: improvement and on-task retention are inconclusive, with the key.
    few = final_gate(
        cfg("data.max_prompts=60"), _fig(40, {**on, "retention": {**on["retention"], "n": 40, "value": 0.99}})
    )
    st = {r.metric: r.status for r in few.results}
    assert st["persona_improvement_ci_low"] == "inconclusive" and st["on_task_retention"] == "inconclusive"
    assert any(
        "too few samples to decide" in d and "raise data.heldout_fraction or data.max_prompts" in d
        for d in few.diagnosis
    )
    # Not measured: a clear note.
    none = final_gate(
        cfg(),
        _fig(
            150, {"retention": {"value": None, "note": "not measured: the baseline is on task in 0 of 150 responses"}}
        ),
    )
    r = next(r for r in none.results if r.metric == "on_task_retention")
    assert r.status == "fail" and "on task in 0 of 150" in r.note
