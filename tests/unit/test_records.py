"""The typed run-directory records: old files load, bad fields are named in one line, writers keep their shape."""

from __future__ import annotations

import doctest
import json

import pytest

from personatune import records
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.records import (
    STAGE_TITLES,
    FinalRecord,
    GateRecord,
    RecordError,
    RoundRow,
    SamplingFingerprint,
    StepRow,
    parse_record,
    read_record,
    salvage_record,
)


def test_doctests():
    assert doctest.testmod(records).failed == 0


def test_stage_titles_are_the_pipelines():
    from personatune.pipeline import STAGES

    assert [(s.id, s.title) for s in STAGES] == list(STAGE_TITLES.items())


def test_gate_round_trip_keeps_the_file_shape():
    rep = GateReport(
        "04_evaluation",
        check_gates(
            [GateSpec("adherence", 0.9, ">=", "fraction", min_n=97, n_key="data.max_prompts")],
            {"adherence": Measurement(0.95, n=40, ci=(0.9, 0.99))},
        ),
        diagnosis=["d"],
        next_steps=["s"],
    )
    rec = GateRecord.of(rep)
    assert json.loads(json.dumps(rec.to_json())) == json.loads(json.dumps(rep.to_dict()))  # same keys, same values
    back = rec.to_report()
    assert back.status == "inconclusive" and back.shortfall() == rep.shortfall() and back.results[0].ci == (0.9, 0.99)
    assert rec.manifest_summary()["results"][0]["min_n"] == 97


def test_old_gate_without_status_loads():
    # gate.json written before inconclusive gates: no status, no min_n.
    g = parse_record(
        GateRecord,
        {
            "stage": "03_consistency_data",
            "passed": False,
            "results": [
                {"metric": "rate", "value": 0.5, "threshold": 0.85, "direction": ">=", "unit": "f", "passed": False}
            ],
        },
        "g",
    )
    assert g.results[0].status == "fail" and g.status is None and g.to_report().status == "fail"


def test_bad_field_is_one_line_naming_file_and_field(tmp_path):
    p = tmp_path / "final.json"
    p.write_text(json.dumps({"verdict": "DEPLOY", "improvement": {"value": "big"}}))
    with pytest.raises(RecordError) as e:
        read_record(FinalRecord, p, "07_final_eval/final.json")
    assert str(e.value).startswith("07_final_eval/final.json: improvement.value: ") and "\n" not in str(e.value)
    p.write_text("{not json")
    with pytest.raises(RecordError, match="final.json: not valid JSON"):
        read_record(FinalRecord, p, "final.json")
    with pytest.raises(RecordError, match="missing"):
        read_record(FinalRecord, tmp_path / "absent.json")


def test_salvage_keeps_what_fits():
    rec, warn = salvage_record(
        FinalRecord,
        {
            "verdict": "NO-DEPLOY",
            "per_context": {"casual": {"n": 3}, "odd": "x"},
            "gates": [{"metric": "a", "passed": True}, {"value": 1}],
        },
        "final.json",
    )
    assert (
        rec is not None
        and rec.verdict == "NO-DEPLOY"
        and list(rec.per_context) == ["casual"]
        and [g.metric for g in rec.gates] == ["a"]
    )
    assert warn == [
        "final.json: per_context.odd: Input should be a valid dictionary or instance of ContextFigures; left out",
        "final.json: gates.1.metric: Field required; left out",
    ]
    assert salvage_record(FinalRecord, [1], "f")[0] is None


def test_rows_keep_extra_columns_order_and_drift_kind():
    raw = {"step": 2, "kl": 0.1, "reward": 0.4, "kl_reference": "persona-prompted baseline", "checkpoint": "c"}
    row = StepRow.model_validate(raw)
    assert list(row.to_json()) == list(raw) and row.kl_is_drift
    assert not StepRow.model_validate({"step": 1, "kl": 0.1}).kl_is_drift  # written before drift KL
    assert StepRow.model_validate({"step": 1, "kl": 0.1, "persona_shift": None}).kl_is_drift
    r = RoundRow.model_validate({"round": 1, "yield": 0.25})
    assert r.yield_ == 0.25 and r.to_json() == {"round": 1, "yield": 0.25}


def test_fingerprint_compares_everything_but_the_samples_hash():
    a = SamplingFingerprint(model={"name": "m"}, decoding={"temperature": 0.7}, seed=1, prompts="p", samples="x")
    assert a.same_sampling(a.model_copy(update={"samples": "y"}))
    assert not a.same_sampling(a.model_copy(update={"seed": 2}))
