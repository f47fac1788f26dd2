"""The stage-2 gate: counts, leave-one-out separability, redundancy, report and stage entry point.

The arithmetic is checked on hand-made embeddings (a fake embedder); the example personas and the
broken ones are checked with the real MiniLM (loaded once, ~3 s).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from personatune.config import PersonaGateArgs
from personatune.errors import ConfigError, PersonaSpecError
from personatune.persona import PersonaSpec, load_persona
from personatune.stages.s2_persona import (
    PersonaGateConfig,
    centroid_similarity,
    check_persona,
    evaluate_persona_file,
    format_table,
    loo_separability,
)

REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "tests" / "data" / "broken_personas"
EXAMPLES = REPO / "examples" / "personas"


def unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a / np.linalg.norm(a)


E1, E2, E3, E4 = (unit(*row) for row in np.eye(4))


class FakeEmbedder:
    """Text -> the vector the test assigns to it."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, 4))


def metric(report, name, direction=None):
    return next(r for r in report.gate.results if r.metric == name and (direction is None or r.direction == direction))


def make_spec(traits: dict[str, tuple[list[str], list[str]]], n_examples: int = 3) -> PersonaSpec:
    ex = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    return PersonaSpec.model_validate({
        "name": "Fake", "summary": "s",
        "traits": [{"id": k, "description": f"{k} trait", "positive": p, "negative": n} for k, (p, n) in traits.items()],
        "examples": [ex] * n_examples,
    })


def orthogonal_persona(k: int = 5, per: int = 3) -> tuple[PersonaSpec, FakeEmbedder]:
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
    return make_spec(traits), FakeEmbedder(table)


# --- arithmetic ------------------------------------------------------------------------------------


def test_loo_perfectly_separable_is_one():
    pos = [np.stack([E1, E1, E1]), np.stack([E2, E2, E2])]
    neg = [np.stack([E3, E3, E3]), np.stack([E4, E4, E4])]
    res = loo_separability(pos, neg)
    assert [r["accuracy"] for r in res] == [1.0, 1.0]
    assert res[0]["predictions"][0] == ("positive", 0, 0) and res[0]["predictions"][3] == ("negative", 0, -1)


def test_loo_counts_positive_that_reads_like_another_trait_as_wrong():
    # Trait 0's third positive sits on trait 1's axis: 2 of 3 positives right, 3 of 3 negatives right.
    pos = [np.stack([E1, E1, E2]), np.stack([E2, E2, E2])]
    neg = [np.stack([E3, E3, E3]), np.stack([E4, E4, E4])]
    res = loo_separability(pos, neg)
    assert res[0]["accuracy"] == pytest.approx(5 / 6)
    assert res[0]["positive"] == pytest.approx(2 / 3) and res[0]["negative"] == 1.0
    assert ("positive", 2, 1) in res[0]["predictions"]


def test_loo_really_holds_the_exemplar_out():
    # A negative that leans towards the trait's positives (0.6 on E1) but is otherwise unlike the other
    # negatives: with itself in the negatives' centroid it would be classified "negative"; held out, the
    # negatives' centroid is E3 (cos 0) and trait 0's positives win (cos 0.6): wrong, so 5 of 6.
    odd = unit(0.6, 0, 0, 0.8)
    pos = [np.stack([E1, E1, E1]), np.stack([E2, E2, E2])]
    neg = [np.stack([E3, E3, odd]), np.stack([E4, E4, E4])]
    res = loo_separability(pos, neg)
    assert res[0]["negative"] == pytest.approx(2 / 3) and res[0]["accuracy"] == pytest.approx(5 / 6)
    assert ("negative", 2, 0) in res[0]["predictions"]


def test_loo_negatives_classified_as_another_trait_count_as_right():
    # t0's negatives look like trait 1's positives: still "not t0", so right.
    pos = [np.stack([E1, E1, E1]), np.stack([E2, E2, E2])]
    neg = [np.stack([E2, E2, E2]), np.stack([E4, E4, E4])]
    assert loo_separability(pos, neg)[0]["negative"] == 1.0


def test_loo_negated_copies_fail():
    # Negatives identical in direction to positives: each held-out positive ties at best, the LOO
    # centroid of the remaining positives equals that of the negatives -> about chance or worse.
    pos = [np.stack([E1, unit(1, 0.1, 0, 0), unit(1, 0, 0.1, 0)]), np.stack([E2, E2, E2])]
    neg = [np.stack([unit(1, 0.05, 0, 0), unit(1, 0, 0.05, 0), unit(1, 0.05, 0.05, 0)]), np.stack([E4, E4, E4])]
    assert loo_separability(pos, neg)[0]["accuracy"] <= 0.5


def test_loo_without_exemplars_is_none():
    res = loo_separability([np.zeros((0, 4)), np.stack([E2, E2])], [np.zeros((0, 4)), np.stack([E4, E4])])
    assert res[0]["accuracy"] is None and res[1]["accuracy"] == 1.0


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
    assert [t.loo_accuracy for t in rep.traits] == [1.0] * 5
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
    assert f"traits 'trait_3' and 'trait_4' are redundant: centroid cosine similarity {r.value:.3f} >= 0.9" in rep.gate.diagnosis
    assert any("merge 'trait_3' and 'trait_4'" in s for s in rep.gate.next_steps)
    assert rep.traits[3].nearest_trait == "trait_4" and "redundant with trait_4" in rep.traits[3].problems


def test_bound_is_configurable_and_strict():
    spec, emb = orthogonal_persona()
    for j in range(3):
        emb.table[f"t4 pos {j}"] = unit(*np.eye(10)[6]) + unit(*np.eye(10)[8])  # halfway: cos 0.707 to trait_3
    value = metric(check_persona(spec, emb), "max_trait_similarity").value
    assert value == pytest.approx(np.sqrt(0.5), abs=0.05)
    assert metric(check_persona(spec, emb, PersonaGateConfig(max_trait_similarity=value + 0.01)), "max_trait_similarity").passed
    assert not metric(check_persona(spec, emb, PersonaGateConfig(max_trait_similarity=value - 0.01)), "max_trait_similarity").passed


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


def test_inseparable_trait_is_named_with_its_confusions():
    spec, emb = orthogonal_persona()
    for j in range(3):  # trait_1's negatives point the same way as its positives
        emb.table[f"t1 neg {j}"] = emb.table[f"t1 pos {j}"] + 0.02
    rep = check_persona(spec, emb)
    r = metric(rep, "min_separability")
    assert not r.passed and r.note == "lowest: trait_1" and r.value < 0.8 and r.n == 30
    bad = rep.traits[1]
    assert bad.confusions and all(c["text"].startswith("t1 ") for c in bad.confusions)
    assert any(d.startswith("trait 'trait_1' is not separable: leave-one-out accuracy") for d in rep.gate.diagnosis)
    # With the threshold lowered to that value, the same persona passes.
    assert metric(check_persona(spec, emb, PersonaGateConfig(min_separability=r.value)), "min_separability").passed


def test_config_from_run_config_section_and_validation():
    cfg = PersonaGateConfig.from_args(PersonaGateArgs(min_traits=2, max_trait_similarity=0.8))
    assert cfg.min_traits == 2 and cfg.max_trait_similarity == 0.8 and cfg.min_separability == 0.8
    spec, emb = orthogonal_persona(k=4)
    rep = check_persona(spec, emb, PersonaGateArgs(min_traits=4))  # the config section itself works too
    assert metric(rep, "trait_count", ">=").passed and rep.config.min_traits == 4
    with pytest.raises(ConfigError, match="max_traits = 3 must be >= min_traits = 5"):
        PersonaGateConfig(max_traits=3)
    with pytest.raises(ConfigError, match="min_separability = 1.5 must be in"):
        PersonaGateConfig(min_separability=1.5)


def test_example_breaking_a_hard_rule_is_a_warning_not_a_failure():
    spec, emb = orthogonal_persona()
    data = spec.model_dump()
    data["behaviors"] = [{"id": "asks", "description": "ends with a question", "check": {"ends_with_question": True}}]
    rep = check_persona(PersonaSpec.model_validate(data), emb)
    assert rep.passed and metric(rep, "rules_parse").n == 3
    assert rep.warnings == [f"examples[{i}].messages[1] breaks hard rule(s) asks; fix the example or the rule" for i in range(3)]


# --- real MiniLM ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    from personatune.embeddings import Embedder

    return Embedder.default()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_personas_pass_their_gate(path, embedder):
    rep = evaluate_persona_file(path, embedder=embedder)
    assert rep.passed, format_table(rep)
    assert rep.warnings == [], rep.warnings


def test_real_redundant_pair_fails(embedder):
    rep = evaluate_persona_file(BROKEN / "redundant.yaml", embedder=embedder)
    r = metric(rep, "max_trait_similarity")
    assert not r.passed and r.value > 0.9 and r.note == "pair: cheerful ~ happy"


def test_real_negated_negatives_are_not_separable(embedder):
    rep = evaluate_persona_file(BROKEN / "inseparable.yaml", embedder=embedder)
    patient, warm = rep.traits
    assert patient.loo_accuracy < 0.8 < warm.loo_accuracy
    assert metric(rep, "min_separability").note == "lowest: patient"


def test_real_draft_fails_with_counts_not_schema_error(embedder):
    rep = evaluate_persona_file(BROKEN / "too_few.yaml", embedder=embedder)
    assert not rep.passed
    assert "trait 'cheerful' has 1 positive exemplar(s) (needs >= 3)" in rep.gate.diagnosis
    assert "trait 'precise' has" not in " ".join(rep.gate.diagnosis).replace("trait 'precise' is not separable", "")


def test_invalid_file_raises_not_reports(embedder):
    with pytest.raises(PersonaSpecError):
        evaluate_persona_file(BROKEN / "wrong_types.yaml", embedder=embedder)


def test_table_and_json(embedder):
    rep = evaluate_persona_file(BROKEN / "redundant.yaml", embedder=embedder)
    table = format_table(rep)
    lines = table.splitlines()
    assert lines[0] == f"persona: Echo  ({BROKEN / 'redundant.yaml'})"
    assert lines[2].split() == ["trait", "#pos", "#neg", "LOO", "acc", "(pos/neg)", "nearest", "trait", "(cos)", "result"]
    assert lines[3].split()[:3] == ["cheerful", "4", "4"] and "redundant with happy" in lines[3]
    assert "[02_persona] gate FAILED" in table
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["passed"] is False and [t["id"] for t in d["traits"]] == ["cheerful", "happy"]
    assert d["config"]["max_trait_similarity"] == 0.9 and d["similarity"]["cheerful"]["happy"] > 0.9
    for r in d["gate"]["results"]:
        assert {"metric", "value", "threshold", "direction", "unit", "passed", "n"} <= set(r)


def test_stage_run_writes_outputs(tmp_path, embedder):
    from personatune.config import load_config
    from personatune.rundir import RunDir
    from personatune.stages import s2_persona

    persona = EXAMPLES / "captain_nova.yaml"
    cfg = load_config(None, [f"persona={persona}", "gates.persona.min_separability=0.99"])
    rd = RunDir(tmp_path / "run")
    res = s2_persona.run(cfg, rd)
    assert res.outputs["persona"].read_bytes() == persona.read_bytes()
    saved = json.loads(res.outputs["report"].read_text())
    # The threshold from the run config reaches the gate.
    assert saved["config"]["min_separability"] == 0.99 and res.gate is not None
    sep = next(r for r in res.gate.results if r.metric == "min_separability")
    assert sep.threshold == 0.99 and sep.passed == (sep.value >= 0.99)
    assert res.metrics["traits"] == len(load_persona(persona).traits)
