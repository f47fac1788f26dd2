"""The stage-2 gate: counts, separability, redundancy (real MiniLM embeddings, no LLM)."""

from pathlib import Path

import pytest

from personatune.config import PersonaGateArgs
from personatune.persona import load_persona
from personatune.stages.s2_persona import check_persona, evaluate_persona_file, format_table

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken_personas"


@pytest.fixture(scope="module")
def embedder():
    from personatune.embeddings import Embedder

    return Embedder.default()


def metric(report, name):
    return next(r for r in report.gate.results if r.metric == name)


def test_too_few_traits_exemplars_examples_fail_with_diagnosis(embedder):
    rep = check_persona(load_persona(BROKEN / "too_few.yaml"), embedder)
    assert not rep.passed
    assert metric(rep, "traits").value == 2 and not metric(rep, "traits").passed
    assert not metric(rep, "positive[cheerful]").passed and metric(rep, "positive[precise]").passed
    assert not metric(rep, "examples").passed
    text = " ".join(rep.gate.diagnosis + rep.gate.next_steps)
    assert "cheerful has 1 positive exemplars" in text and "at least 5" in text


def test_redundant_traits_fail(embedder):
    rep = check_persona(load_persona(BROKEN / "redundant.yaml"), embedder)
    r = metric(rep, "max_trait_similarity")
    assert r.value > 0.99 and not r.passed
    assert any("redundant traits: cheerful~happy" in d for d in rep.gate.diagnosis)


def test_thresholds_are_configurable(embedder):
    spec = load_persona(BROKEN / "too_few.yaml")
    rep = check_persona(spec, embedder, PersonaGateArgs(min_traits=2, min_positive=1, min_negative=1, min_examples=0, min_separability=0.0))
    assert metric(rep, "traits").passed and metric(rep, "positive[cheerful]").passed and metric(rep, "examples").passed


def test_table_and_json(embedder):
    rep = evaluate_persona_file(BROKEN / "redundant.yaml", embedder=embedder)
    table = format_table(rep)
    assert "cheerful" in table and "happy" in table and "gate FAILED" in table
    d = rep.to_dict()
    assert d["passed"] is False and {t["trait"] for t in d["traits"]} == {"cheerful", "happy"}
    for r in d["results"]:
        assert {"metric", "value", "threshold", "direction", "unit"} <= set(r)
