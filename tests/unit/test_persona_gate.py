"""The stage-2 gate: counts, leave-one-out separability, redundancy, report and stage entry point.

The gate logic is checked on hand-made embeddings (a fake instrument) and a table standing in for the
instrument's leave-one-out reads; the example personas, the hand-written gold personas and the broken
ones are checked with the shipped instrument (loaded once, ~3 s).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from personatune import persona_gate, persona_measures
from personatune.config import PersonaGateArgs
from personatune.errors import PersonaSpecError
from personatune.persona import PersonaSpec, load_persona
from personatune.persona_gate import check_persona
from personatune.persona_measures import centroid_similarity, loo_separability
from personatune.stages import s2_persona as s2
from personatune.stages.s2_persona import evaluate_persona_file, format_table

REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "tests" / "data" / "broken_personas"
EXAMPLES = REPO / "examples" / "personas"


def unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a / np.linalg.norm(a)


E1, E2, E3, E4 = (unit(*row) for row in np.eye(4))


class FakeInstrument:
    """Text -> the vector the test assigns to it (used as both the frozen and the persona embedding)."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode_both(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        e = np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, 4))
        return e, e


def metric(report, name, direction=None):
    return next(r for r in report.gate.results if r.metric == name and (direction is None or r.direction == direction))


def make_spec(traits: dict[str, tuple[list[str], list[str]]], n_examples: int = 3) -> PersonaSpec:
    ex = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    return PersonaSpec.model_validate(
        {
            "name": "Fake",
            "summary": "s",
            "traits": [
                {"id": k, "description": f"{k} trait", "positive": p, "negative": n} for k, (p, n) in traits.items()
            ],
            "examples": [ex] * n_examples,
        }
    )


@pytest.fixture(autouse=True)
def fake_loo(request, monkeypatch):
    """Except in the tests of the real instrument: the instrument's leave-one-out reads come from a table,
    {trait index: [(kind, i, read), ...]}; a trait not in the table has every exemplar read right. The
    stand-in's AUROC is its accuracy (the gate logic, not the ranking arithmetic, is under test here)."""
    table: dict[int, list[tuple[str, int, str]]] = {}
    if "real" in request.keywords:
        return table

    def loo(spec, instrument):
        out = []
        for k, t in enumerate(spec.traits):
            preds = table.get(k) or (
                [("positive", i, "expressed") for i in range(len(t.positive))]
                + [("negative", i, "violated") for i in range(len(t.negative))]
            )
            ok = {
                kind: [r == ("expressed" if kind == "positive" else "violated") for kd, _, r in preds if kd == kind]
                for kind in ("positive", "negative")
            }
            n = len(ok["positive"]) + len(ok["negative"])
            acc = (sum(ok["positive"]) + sum(ok["negative"])) / n if n else None
            out.append(
                {
                    "auroc": acc,
                    "accuracy": acc,
                    "positive": float(np.mean(ok["positive"])) if ok["positive"] else None,
                    "negative": float(np.mean(ok["negative"])) if ok["negative"] else None,
                    "predictions": preds,
                }
            )
        return out

    monkeypatch.setattr(persona_gate, "loo_separability", loo)  # where check_persona looks it up
    return table


def orthogonal_persona(k: int = 5, per: int = 3) -> tuple[PersonaSpec, FakeInstrument]:
    """k traits with positives on axis 2i and negatives on axis 2i+1 of a 2k-dim space (perfectly separable)."""
    table, traits = {}, {}
    rng = np.random.default_rng(0)
    for i in range(k):
        pos, neg = [f"t{i} pos {j}" for j in range(per)], [f"t{i} neg {j}" for j in range(per)]
        for j, (p, n) in enumerate(zip(pos, neg)):
            vp, vn = np.zeros(2 * k), np.zeros(2 * k)
            vp[2 * i], vn[2 * i + 1] = 1.0, 1.0
            table[p], table[n] = vp + 0.05 * rng.standard_normal(2 * k), vn + 0.05 * rng.standard_normal(2 * k)
        traits[f"trait_{i}"] = (pos, neg)
    return make_spec(traits), FakeInstrument(table)


# --- leave-one-out bookkeeping ----------------------------------------------------------------------


@pytest.mark.real
def test_loo_really_holds_the_exemplar_out(monkeypatch):
    """A profile that recognises only texts it contains: held out properly, nothing can be read right."""
    import personatune.scoring.traits as traits_mod
    from personatune.scoring.traits import PersonaProfile, Scores

    spec, _ = orthogonal_persona(k=2)

    def fake_build(spec, instrument=None):
        pos = [np.array([t.description, *t.positive], dtype=object) for t in spec.traits]
        neg = [np.array(list(t.negative), dtype=object) for t in spec.traits]
        return PersonaProfile(spec.trait_ids, pos, neg, np.zeros((1, 4)), {})

    def fake_score(self, texts, instrument):
        expressed = [{tid: float(x in list(self.pos[k])) for k, tid in enumerate(self.trait_ids)} for x in texts]
        violated = [{tid: float(x in list(self.neg[k])) for k, tid in enumerate(self.trait_ids)} for x in texts]
        return Scores(expressed, violated, [0.0] * len(texts))

    monkeypatch.setattr(traits_mod, "build_profile", fake_build)
    monkeypatch.setattr(PersonaProfile, "score", fake_score)
    monkeypatch.setattr(persona_measures, "opposite_twins", lambda p, n: (list(range(len(p))), list(range(len(n)))))
    res = loo_separability(spec, instrument=None)
    # Held out, every exemplar has margin 0: no side is preferred (AUROC 0.5), nothing is on the right side.
    assert [r["auroc"] for r in res] == [0.5, 0.5] and [r["accuracy"] for r in res] == [0.0, 0.0]
    assert res[0]["predictions"][0] == ("positive", 0, "violated") and res[0]["margins"] == [0.0] * 6
    # The control: without the hold-out every exemplar is read right (the bookkeeping is the difference).
    monkeypatch.setattr(np, "delete", lambda a, i, axis=0: a)
    assert [(r["auroc"], r["accuracy"]) for r in loo_separability(spec, instrument=None)] == [(1.0, 1.0), (1.0, 1.0)]


@pytest.mark.real
def test_loo_holds_out_the_opposite_twin(monkeypatch):
    """A profile that reads a sentence by its topic (index j) and a little by its attitude (pos/neg): held out
    alone, each exemplar is read as its twin on the other side (AUROC 0, the leave-one-out bias); held out with
    its twin, by its attitude (AUROC 1)."""
    import personatune.scoring.traits as traits_mod
    from personatune.scoring.traits import PersonaProfile, Scores

    spec, _ = orthogonal_persona(k=2)

    def fake_build(spec, instrument=None):
        pos = [np.array([t.description, *t.positive], dtype=object) for t in spec.traits]
        neg = [np.array(list(t.negative), dtype=object) for t in spec.traits]
        return PersonaProfile(spec.trait_ids, pos, neg, np.zeros((1, 4)), {})

    def side(rows, x):  # 1 when a row shares x's topic (its last word), + 0.5 for x's own attitude
        return float(any(str(r).split()[-1] == x.split()[-1] for r in rows))

    def fake_score(self, texts, instrument):
        e = [{tid: side(self.pos[k], x) + 0.5 * (" pos " in x) for k, tid in enumerate(self.trait_ids)} for x in texts]
        v = [{tid: side(self.neg[k], x) + 0.5 * (" neg " in x) for k, tid in enumerate(self.trait_ids)} for x in texts]
        return Scores(e, v, [0.0] * len(texts))

    monkeypatch.setattr(traits_mod, "build_profile", fake_build)
    monkeypatch.setattr(PersonaProfile, "score", fake_score)
    monkeypatch.setattr(persona_measures, "opposite_twins", lambda p, n: (list(range(len(p))), list(range(len(n)))))
    assert [r["auroc"] for r in loo_separability(spec, instrument=None)] == [1.0, 1.0]
    assert [r["auroc"] for r in loo_separability(spec, instrument=None, pairs=False)] == [0.0, 0.0]


def test_opposite_twins_pairs_each_exemplar_with_its_nearest_opposite():
    pos = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    neg = np.array([[0.0, 0.9, 0.1], [0.1, 0.0, 0.9], [0.8, 0.2, 0.0]])
    assert persona_measures.opposite_twins(pos, neg) == ([2, 0, 1], [1, 2, 0])
    assert persona_measures.opposite_twins(pos, neg[:0]) == ([], [])


def test_centroid_similarity():
    sim = centroid_similarity([np.stack([E1, E1]), np.stack([E1, E2]), np.stack([E3])])
    assert sim[0, 0] == pytest.approx(1.0)
    assert sim[0, 1] == pytest.approx(1 / np.sqrt(2)) and sim[1, 0] == pytest.approx(sim[0, 1])
    assert sim[0, 2] == pytest.approx(0.0)
    assert np.isnan(centroid_similarity([np.stack([E1]), np.zeros((0, 4))])[0, 1])


# --- the gate on hand-made embeddings ---------------------------------------------------------------


def test_separable_persona_passes_every_gate():
    spec, emb = orthogonal_persona()
    rep = check_persona(spec, emb)
    assert rep.passed, rep.gate.summary()
    assert [t.loo_auroc for t in rep.traits] == [1.0] * 5
    assert metric(rep, "trait_count", ">=").value == 5 and metric(rep, "example_interactions").value == 3
    assert metric(rep, "max_trait_similarity").value < 0.1
    assert rep.gate.diagnosis == [] and rep.gate.next_steps == []


def test_redundant_pair_is_named_with_its_similarity():
    spec, emb = orthogonal_persona()
    # Move trait_4's positives onto trait_3's axis: the pair is redundant and neither is separable.
    for j in range(3):
        emb.table[f"t4 pos {j}"] = emb.table[f"t3 pos {j}"] + 0.01
    rep = check_persona(spec, emb)
    r = metric(rep, "max_trait_similarity")
    assert not r.passed and r.value > 0.99 and r.note == "pair: trait_3 ~ trait_4"
    assert (
        f"traits 'trait_3' and 'trait_4' are redundant: centroid cosine similarity {r.value:.3f} >= 0.9"
        in rep.gate.diagnosis
    )
    assert any("merge 'trait_3' and 'trait_4'" in s for s in rep.gate.next_steps)
    assert rep.traits[3].nearest_trait == "trait_4" and "redundant with trait_4" in rep.traits[3].problems


def test_bound_is_configurable_and_strict():
    spec, emb = orthogonal_persona()
    for j in range(3):
        emb.table[f"t4 pos {j}"] = unit(*np.eye(10)[6]) + unit(*np.eye(10)[8])  # halfway: cos 0.707 to trait_3
    value = metric(check_persona(spec, emb), "max_trait_similarity").value
    assert value == pytest.approx(np.sqrt(0.5), abs=0.05)
    assert metric(
        check_persona(spec, emb, PersonaGateArgs(max_trait_similarity=value + 0.01)), "max_trait_similarity"
    ).passed
    assert not metric(
        check_persona(spec, emb, PersonaGateArgs(max_trait_similarity=value - 0.01)), "max_trait_similarity"
    ).passed


def test_counts_and_diagnosis_name_the_trait():
    spec, emb = orthogonal_persona()
    data = spec.model_dump()
    data["traits"][2]["positive"] = data["traits"][2]["positive"][:2]
    data["traits"][4]["description"] = "   "
    data["examples"] = data["examples"][:1]
    rep = check_persona(PersonaSpec.model_validate(data), emb)
    assert not rep.passed
    assert metric(rep, "min_positive_exemplars").value == 2 and not metric(rep, "min_positive_exemplars").passed
    assert metric(rep, "min_negative_exemplars").passed
    assert metric(rep, "traits_without_description").value == 1
    assert metric(rep, "example_interactions").value == 1
    assert "trait 'trait_2' has 2 positive exemplar(s) (needs >= 3)" in rep.gate.diagnosis
    assert "add 1 more first-person utterance(s) that express 'trait_2' to its `positive:` list" in rep.gate.next_steps
    assert "trait 'trait_4' has a blank description" in rep.gate.diagnosis
    assert rep.traits[2].problems == ["2 positive < 3"] and rep.traits[0].passed


def test_trait_count_bounds():
    spec, emb = orthogonal_persona(k=4)
    rep = check_persona(spec, emb)
    assert not metric(rep, "trait_count", ">=").passed and metric(rep, "trait_count", "<=").passed
    assert "the persona has 4 trait(s); the gate needs 5-10" in rep.gate.diagnosis
    spec, emb = orthogonal_persona(k=11)
    rep = check_persona(spec, emb)
    assert metric(rep, "trait_count", ">=").passed and not metric(rep, "trait_count", "<=").passed


def test_inseparable_trait_is_named_with_its_confusions(fake_loo):
    spec, emb = orthogonal_persona()
    # The instrument reads two of trait_1's positives as neither and one negative as expressed: 3 of 6 right.
    fake_loo[1] = [
        ("positive", 0, "violated"),
        ("positive", 1, "violated"),
        ("positive", 2, "expressed"),
        ("negative", 0, "expressed"),
        ("negative", 1, "violated"),
        ("negative", 2, "violated"),
    ]
    rep = check_persona(spec, emb)
    r = metric(rep, "min_separability")
    assert not r.passed and r.note == "lowest: trait_1" and r.value == pytest.approx(0.5) and r.n == 30
    bad = rep.traits[1]
    assert bad.confusions == [
        {"kind": "positive", "text": "t1 pos 0", "read_as": "violated"},
        {"kind": "positive", "text": "t1 pos 1", "read_as": "violated"},
        {"kind": "negative", "text": "t1 neg 0", "read_as": "expressed"},
    ]
    assert any(
        d.startswith(
            "trait 'trait_1' is not measurable: leave-one-pair-out AUROC 0.50 < 0.8; 2/3 positives read more as contradicting"
        )
        for d in rep.gate.diagnosis
    ), rep.gate.diagnosis
    # With the threshold lowered to that value, the same persona passes.
    assert metric(check_persona(spec, emb, PersonaGateArgs(min_separability=r.value)), "min_separability").passed


def test_config_from_run_config_section_and_validation():
    cfg = PersonaGateArgs(min_traits=2, max_trait_similarity=0.8)
    assert cfg.min_traits == 2 and cfg.max_trait_similarity == 0.8 and cfg.min_separability == 0.8
    spec, emb = orthogonal_persona(k=4)
    rep = check_persona(spec, emb, PersonaGateArgs(min_traits=4))  # the config section itself works too
    assert metric(rep, "trait_count", ">=").passed and rep.config.min_traits == 4
    # Bad thresholds are refused when the config loads (pydantic's ValidationError is a ValueError; the
    # one-line form through load_config is tested in test_config_eval.py).
    with pytest.raises(ValueError, match="max_traits = 3 must be >= min_traits = 5"):
        PersonaGateArgs(max_traits=3)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        PersonaGateArgs(min_separability=1.5)


def test_example_breaking_a_hard_rule_is_a_warning_not_a_failure():
    spec, emb = orthogonal_persona()
    data = spec.model_dump()
    data["behaviors"] = [{"id": "asks", "description": "ends with a question", "check": {"ends_with_question": True}}]
    rep = check_persona(PersonaSpec.model_validate(data), emb)
    assert rep.passed and metric(rep, "rules_parse").n == 3
    assert rep.warnings == [
        f"examples[{i}].messages[1] breaks hard rule(s) asks; fix the example or the rule" for i in range(3)
    ]


# --- the shipped instrument ---------------------------------------------------------------------------

GOLD = REPO / "benchmarks" / "gold"


@pytest.fixture(scope="module")
def instrument():
    from personatune.scoring.instrument import Instrument

    return Instrument.default()


# The three new dev gold personas are clear to a careful reader, but the shipped instrument does not yet
# order their own exemplars well enough (leave-one-pair-out AUROC 0.69-0.77 on their weakest trait; 0.35-0.45 with
# plain leave-one-out). A known limitation, recorded in docs/benchmarks.md;
# strict xfail, so the day they pass this test says so.
NOT_YET = {"marlowe", "rosie", "wren"}


def _clear_personas():
    out = [pytest.param(p, id=p.name) for p in sorted(EXAMPLES.glob("*.yaml"))]
    for p in sorted(GOLD.glob("*/persona.yaml")):
        marks = (
            [pytest.mark.xfail(strict=True, reason="the instrument cannot yet order this persona's exemplars")]
            if p.parent.name in NOT_YET
            else []
        )
        out.append(pytest.param(p, id=p.parent.name, marks=marks))
    return out


@pytest.mark.stage
@pytest.mark.real
@pytest.mark.parametrize("path", _clear_personas())
def test_clear_personas_pass_their_gate(path, instrument):
    rep = evaluate_persona_file(path, instrument=instrument)
    assert rep.passed, format_table(rep)
    assert rep.warnings == [], rep.warnings


@pytest.mark.stage
@pytest.mark.real
def test_real_redundant_pair_fails(instrument):
    rep = evaluate_persona_file(BROKEN / "redundant.yaml", instrument=instrument)
    r = metric(rep, "max_trait_similarity")
    assert not r.passed and r.value > 0.9 and r.note == "pair: cheerful ~ happy"


@pytest.mark.stage
@pytest.mark.real
def test_real_vague_traits_are_not_measurable(instrument):
    rep = evaluate_persona_file(BROKEN / "vague.yaml", instrument=instrument)
    r = metric(rep, "min_separability")
    assert not rep.passed and not r.passed, format_table(rep)
    assert any("is not measurable" in d for d in rep.gate.diagnosis)


@pytest.mark.stage
@pytest.mark.real
def test_real_draft_fails_with_counts_not_schema_error(instrument):
    rep = evaluate_persona_file(BROKEN / "too_few.yaml", instrument=instrument)
    assert not rep.passed
    assert "trait 'cheerful' has 1 positive exemplar(s) (needs >= 3)" in rep.gate.diagnosis


@pytest.mark.stage
@pytest.mark.real
def test_invalid_file_raises_not_reports(instrument):
    with pytest.raises(PersonaSpecError):
        evaluate_persona_file(BROKEN / "wrong_types.yaml", instrument=instrument)


@pytest.mark.stage
@pytest.mark.real
def test_table_and_json(instrument):
    rep = evaluate_persona_file(BROKEN / "redundant.yaml", instrument=instrument)
    table = format_table(rep)
    lines = table.splitlines()
    assert lines[0] == f"persona: Echo  ({BROKEN / 'redundant.yaml'})"
    assert lines[2].split() == [
        "trait",
        "#pos",
        "#neg",
        "LOO",
        "AUROC",
        "acc",
        "(pos/neg)",
        "nearest",
        "trait",
        "(cos)",
        "result",
    ]
    assert lines[3].split()[:3] == ["cheerful", "4", "4"] and "redundant with happy" in lines[3]
    assert "[02_persona] gate FAILED" in table
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["passed"] is False and [t["id"] for t in d["traits"]] == ["cheerful", "happy"]
    assert d["config"]["max_trait_similarity"] == 0.9 and d["similarity"]["cheerful"]["happy"] > 0.9
    for r in d["gate"]["results"]:
        assert {"metric", "value", "threshold", "direction", "unit", "passed", "n"} <= set(r)


@pytest.mark.stage
@pytest.mark.real
def test_stage_run_writes_outputs(tmp_path, instrument):
    from personatune.config import load_config
    from personatune.rundir import RunDir

    persona = EXAMPLES / "captain_nova.yaml"
    cfg = load_config(None, [f"persona={persona}", "gates.persona.min_separability=0.99"])
    rd = RunDir(tmp_path / "run")
    res = s2.run(cfg, rd)
    assert res.outputs["persona"].read_bytes() == persona.read_bytes()
    saved = json.loads(res.outputs["report"].read_text())
    # The threshold from the run config reaches the gate.
    assert saved["config"]["min_separability"] == 0.99 and res.gate is not None
    sep = next(r for r in res.gate.results if r.metric == "min_separability")
    assert sep.threshold == 0.99 and sep.passed == (sep.value >= 0.99)
    assert res.metrics["traits"] == len(load_persona(persona).traits)
